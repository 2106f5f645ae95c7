"""Datasets: catalog -> download -> prepare (common on-disk layout) -> torch Dataset."""
