"""backdrop: catalog-scale product background generation (CG + PG on diffusers, on Ray)."""

__version__ = "0.1.0"
