"""Starting or joining Ray for a job (training, backfill), the one way every job does it."""

from __future__ import annotations

import os

import ray

from . import storage

# The settings backdrop reads from the environment: a script that starts or joins a cluster
# passes them on to its workers (a submitted job gets them from its runtime env instead).
FORWARDED_ENV = ("BACKDROP_HOME", "MLFLOW_TRACKING_URI", "BACKDROP_MLFLOW_ARTIFACT_ROOT",
                 *storage.ENDPOINT_ENV_VARS, "AWS_DEFAULT_REGION", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def init_ray(address: str | None = None, num_cpus: float | None = None) -> None:
    """Start or join Ray with this checkout's ``backdrop`` on every worker.

    ``runtime_env.py_modules`` ships the package, so a cluster needs no install of it and a
    ``ray job submit --working-dir .`` job runs exactly the submitted code. A script that starts
    or joins a cluster itself also passes on the settings backdrop reads from the environment
    (``FORWARDED_ENV``: registry, S3 endpoint); a submitted job takes its environment from its
    runtime env (``--runtime-env-json '{"env_vars": {...}}'``), because Ray refuses to set a
    variable in both places.
    """
    if ray.is_initialized():
        return
    import backdrop

    runtime_env: dict = {"py_modules": [os.path.dirname(os.path.abspath(backdrop.__file__))]}
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:  # not inside `ray job submit`
        env = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
        from .registry import backdrop_home

        runtime_env["env_vars"] = {**env, "BACKDROP_HOME": backdrop_home()}
    kwargs = {"num_cpus": num_cpus} if num_cpus is not None and address == "local" else {}
    ray.init(address=address, runtime_env=runtime_env, **kwargs)
