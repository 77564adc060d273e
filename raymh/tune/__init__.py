"""Ray Tune sweeps: search-space files (`space`), and the sweep runner (`sweep`, imports Ray when used)."""

from raymh.tune.space import (
    DEFAULT_METRIC,
    Distribution,
    TuneSpace,
    TuneSpaceError,
    apply_base,
    load_space,
    make_scheduler,
    parse_space,
    to_tune_param_space,
    trial_config,
    trial_resources,
    tune_config_kwargs,
    with_overrides,
)

__all__ = [
    "DEFAULT_METRIC",
    "Distribution",
    "TuneSpace",
    "TuneSpaceError",
    "apply_base",
    "load_space",
    "make_scheduler",
    "parse_space",
    "to_tune_param_space",
    "trial_config",
    "trial_resources",
    "tune_config_kwargs",
    "with_overrides",
]
