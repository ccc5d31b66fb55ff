"""glint-track: train a UNet that finds each infrared LED's corneal glint, tracked in MLflow."""

__version__ = "0.1.0"
