"""Starting or joining Ray for a job (training, backfill), the one way every job does it."""

from __future__ import annotations

import os

import ray

from .settings import forwarded_env


def init_ray(address: str | None = None, num_cpus: float | None = None) -> None:
    """Start or join Ray with this checkout's ``backdrop`` on every worker.

    ``runtime_env.py_modules`` ships the package, so a cluster needs no install of it and a
    ``ray job submit --working-dir .`` job runs exactly the submitted code. A script that starts
    or joins a cluster itself also passes on the settings backdrop reads from the environment
    (``settings.FORWARDED_ENV``: registry, S3 endpoint); a submitted job takes its environment from its
    runtime env (``--runtime-env-json '{"env_vars": {...}}'``), because Ray refuses to set a
    variable in both places.
    """
    if ray.is_initialized():
        return
    import backdrop

    runtime_env: dict = {"py_modules": [os.path.dirname(os.path.abspath(backdrop.__file__))]}
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:  # not inside `ray job submit`
        runtime_env["env_vars"] = forwarded_env()
    kwargs = {"num_cpus": num_cpus} if num_cpus is not None and address == "local" else {}
    ray.init(address=address, runtime_env=runtime_env, **kwargs)
