"""Training and evaluation: configs, the training loop, EMA, checkpoints, schedules, metrics, logs."""
from .config import ConfigError, DEFAULTS, load_config, parse_override
from .evaluate import EvalResult, evaluate
from .trainer import TrainError, run_from_cli, train
from ..data import DataError
from ..weights import WeightsError

# errors caused by the user's config, data or files (the tools print them without a traceback)
USER_ERRORS = (ConfigError, TrainError, DataError, WeightsError, FileNotFoundError)

__all__ = ["ConfigError", "DEFAULTS", "load_config", "parse_override", "EvalResult", "evaluate", "TrainError",
           "run_from_cli", "train", "USER_ERRORS"]
