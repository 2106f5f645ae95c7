"""ssaseg: a reproducible benchmark of pixel-level classifiers for semantic segmentation."""

__version__ = "0.1.0"
