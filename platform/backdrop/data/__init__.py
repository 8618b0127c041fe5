"""Datasets: the synthetic catalog generator and (later) catalog readers."""
