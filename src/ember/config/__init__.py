from .errors import ConfigError
from .loader import build_config, load_config
from .schema import TrainConfig

__all__ = ["ConfigError", "TrainConfig", "build_config", "load_config"]
