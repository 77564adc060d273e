"""One typed config for a whole experiment: the schema (`raymh.config.schema`) and how it is loaded from
presets, files and dotted overrides (`raymh.config.loading`). Imports nothing of raymh's machinery."""

from raymh.config.loading import (
    apply_overrides,
    config_from_dict,
    deep_merge,
    flatten,
    load_config,
    load_config_dict,
    parse_override,
    preset_names,
    set_dotted,
    to_yaml,
)
from raymh.config.schema import (
    ConfigError,
    DataConfig,
    DomainConfig,
    ExperimentConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    ScalingConfig,
    SynthConfig,
    TrackingConfig,
    TrainConfig,
)

__all__ = [
    "ConfigError", "DataConfig", "DomainConfig", "ExperimentConfig", "LossConfig", "ModelConfig", "OptimConfig",
    "ScalingConfig", "SynthConfig", "TrackingConfig", "TrainConfig", "apply_overrides", "config_from_dict",
    "deep_merge", "flatten", "load_config", "load_config_dict", "parse_override", "preset_names", "set_dotted",
    "to_yaml",
]  # fmt: skip
