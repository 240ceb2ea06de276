"""Deprecated: the presets live in `training.config` (`get_preset`, `preset_names`, `PRESETS`)."""

import warnings

from training.config import FOLDER_FULL_SIZE_HINT, PRESETS  # noqa: F401
from training.config import get_preset as get  # noqa: F401
from training.config import preset_names as names  # noqa: F401

warnings.warn("training.configs is deprecated; use training.config.get_preset / preset_names",
              DeprecationWarning, stacklevel=2)
