"""``embedplug train``: config-driven fine-tuning with registry losses and samplers (see docs/training.md)."""

from embedplug.train.config import ConfigError, TrainConfig, load_config

__all__ = ["ConfigError", "TrainConfig", "load_config"]
