"""landscape: sharpness-aware training and loss-landscape analysis for PyTorch."""

__version__ = "0.1.0"
