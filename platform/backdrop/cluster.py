"""Starting or joining Ray for a job (training, backfill), the one way every job does it."""

from __future__ import annotations

import os
from contextlib import contextmanager

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
    quiet_data_progress()


def quiet_data_progress() -> None:
    """Ray Data's progress bars are for a terminal: in a non-TTY log (``ray job submit``, CI)
    they print a block of a dozen lines every few seconds on top of the job's own one progress
    line. Off unless stderr is a terminal (a dataset takes the driver's setting with it)."""
    import sys

    from ray.data import DataContext

    if not sys.stderr.isatty():
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.enable_operator_progress_bars = False


@contextmanager
def parquet_reader_v1():
    """Ray Data's v2 Parquet reader lists files through a pool of up to 32 footer-reader actors,
    each placed on a whole free CPU. On a small cluster whose CPUs the training workers (or the
    generator actors) hold, the listing waits for them (25 s of a 4-CPU two-node cluster's
    first batch) or starts processes the machine cannot spare, so our reads use the v1 reader,
    which reads footers inside the fractional-CPU read tasks."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    before = ctx.use_datasource_v2
    ctx.use_datasource_v2 = False
    try:
        yield
    finally:
        ctx.use_datasource_v2 = before
