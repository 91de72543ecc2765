"""sslvit: self-supervised pretraining of vision transformers."""

__version__ = "0.1.0"
