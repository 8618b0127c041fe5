"""Measuring generated images: fixed metrics and the held-out evaluation behind the promotion gate."""
