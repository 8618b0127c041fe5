"""backdrop: catalog-scale product background generation (CG + PG on diffusers, on Ray)."""

import os as _os

# OpenMP threads that busy-wait between parallel regions turn two processes sharing a small
# machine (a Ray actor and a driver, two Serve replicas, a test and a server) into a
# livelock: on 2 cores a 0.7 s generation took 100 s. Sleeping waits cost little alone.
# Set before torch is imported (libgomp reads it once); an explicit setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
