"""Train, evaluate and profile a Segmentor."""
