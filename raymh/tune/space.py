"""Tune search spaces: `tune_spaces/*.yaml` parsed, checked against the config model, mapped to Ray Tune.

A space file (`raymh tune`) looks like this; every top-level field but `params` is optional:

    metric: val/miou_mean      # what the trials report; default val/miou_mean
    mode: max                  # max | min; default max
    num_samples: 8             # trials (with grid_search: repeats of the whole grid); default 1
    scheduler: {type: asha, grace_period: 1, reduction_factor: 2}   # or {type: fifo}; default asha
    resources: {cpu: 2, gpu: 0}      # reserved per trial for its driver function; default cpu 1, gpu 0
    max_concurrent_trials: 2         # optional cap on trials running at once
    base: {train.iters: 200}         # optional fixed dotted overrides applied before sampling
    params:                          # dotted config key -> {distribution: arguments}
      loss.dc_weight: {loguniform: [0.01, 1.0]}      # low > 0, low < high
      loss.gamma: {uniform: [0.5, 0.95]}             # low < high
      model.head_depth: {choice: [1, 2, 3, 4]}       # a non-empty list
      data.labeled_fraction: {grid_search: [0.125, 0.25, 1.0]}
      train.seed: {randint: [0, 1000]}               # integers, high exclusive

`load_space` checks all of it before any trial starts: unknown fields, unknown distributions, wrong
arity, inverted ranges, non-positive loguniform bounds, and every value a trial could get (range
endpoints, each choice) applied to the base config and re-validated with the config model, so a typo'd
key or an out-of-range value fails at once, naming the key.

In a trial, `trial_config(base_dict, sample)` merges the sampled dotted keys into the base and validates.
ASHA's time unit is Tune's `training_iteration`: one per `ray.train.report`, i.e. one per evaluation
(every `train.eval_every` steps and at the end), so `max_t` defaults to ceil(train.iters / train.eval_every).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raymh.config import (
    ConfigError,
    ExperimentConfig,
    config_from_dict,
    deep_merge,
    load_config_dict,
    set_dotted,
)

DEFAULT_METRIC = "val/miou_mean"

# distribution name -> what it takes (used in error messages)
DISTRIBUTIONS: dict[str, str] = {
    "choice": "a non-empty list of values, sampled uniformly",
    "grid_search": "a non-empty list of values, every one tried",
    "uniform": "[low, high] floats, low < high",
    "loguniform": "[low, high] floats, 0 < low < high",
    "randint": "[low, high] integers, low < high, high exclusive",
}


class TuneSpaceError(ConfigError):
    """A tune space file is invalid; the message names the file, the field or key, and the fix."""


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _number_hint(v: Any) -> str:
    if isinstance(v, str):
        try:
            float(v)
        except ValueError:
            return ""
        return f" (YAML read {v!r} as a string: write it with a dot, e.g. {float(v)!r})"
    return ""


class Distribution(BaseModel):
    """One parameter's distribution: written in YAML as a one-key mapping `{uniform: [0.5, 0.95]}`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["choice", "grid_search", "uniform", "loguniform", "randint"]
    args: tuple[Any, ...]

    @model_validator(mode="before")
    @classmethod
    def _from_one_key_mapping(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and set(data) == {"kind", "args"}:
            return data
        if not isinstance(data, Mapping) or len(data) != 1:
            raise ValueError(
                f"expected a one-key mapping {{distribution: arguments}} such as {{uniform: [0.5, 0.95]}}, "
                f"got {data!r}; distributions: {', '.join(DISTRIBUTIONS)}"
            )
        ((kind, args),) = data.items()
        if kind not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {kind!r}; use one of: {', '.join(DISTRIBUTIONS)}")
        if not isinstance(args, list | tuple):
            raise ValueError(f"{kind} takes {DISTRIBUTIONS[kind]}; got {args!r}, not a list")
        return {"kind": kind, "args": tuple(args)}

    @model_validator(mode="after")
    def _check_args(self) -> Distribution:
        kind, args = self.kind, self.args
        if kind in ("choice", "grid_search"):
            if not args:
                raise ValueError(f"{kind} takes {DISTRIBUTIONS[kind]}; got an empty list")
            return self
        if len(args) != 2:
            raise ValueError(f"{kind} takes {DISTRIBUTIONS[kind]}; got {len(args)} values {list(args)}")
        for v in args:
            if not _is_number(v):
                raise ValueError(f"{kind} bounds must be numbers; got {v!r}{_number_hint(v)}")
        low, high = args
        if kind == "randint" and not (isinstance(low, int) and isinstance(high, int)):
            raise ValueError(f"randint bounds must be integers; got {list(args)}")
        if low >= high:
            raise ValueError(
                f"{kind} range [{low}, {high}] is inverted or empty: low must be < high (swap them?)"
            )
        if kind == "loguniform" and low <= 0:
            raise ValueError(
                f"loguniform low must be > 0, got {low}; use e.g. {high / 100:g} or a uniform range"
            )
        return self

    def probe_values(self) -> list[Any]:
        """The values checked against the config: each listed value, or a range's extreme reachable values."""
        if self.kind in ("choice", "grid_search"):
            return list(self.args)
        low, high = self.args
        return [low, high - 1] if self.kind == "randint" else [low, high]


class AshaSpec(BaseModel):
    """Asynchronous successive halving (`ray.tune.schedulers.ASHAScheduler`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["asha"] = "asha"
    grace_period: int = Field(1, ge=1, description="reports a trial always gets before it may be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="keep 1/reduction_factor of the trials per rung")
    max_t: int | None = Field(
        None, ge=1, description="reports per trial (None: train.iters / train.eval_every)"
    )
    brackets: int = Field(1, ge=1, description="ASHA brackets")


class FifoSpec(BaseModel):
    """Run every trial to the end (`ray.tune.schedulers.FIFOScheduler`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["fifo"] = "fifo"


SchedulerSpec = Annotated[AshaSpec | FifoSpec, Field(discriminator="type")]


class TrialResources(BaseModel):
    """Resources reserved per trial for its driver function (the TorchTrainer's workers ask via `scaling.*`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu: float = Field(1.0, ge=0, description="CPUs per trial")
    gpu: float = Field(0.0, ge=0, description="GPUs per trial")


class TuneSpace(BaseModel):
    """A whole `tune_spaces/*.yaml` file (format in this module's docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(DEFAULT_METRIC, min_length=1, description="reported metric the sweep optimises")
    mode: Literal["max", "min"] = Field("max", description="maximise or minimise the metric")
    num_samples: int = Field(1, ge=1, description="trials; with grid_search, repeats of the grid")
    scheduler: SchedulerSpec = Field(default_factory=AshaSpec, description="asha (default) or fifo")
    resources: TrialResources = Field(default_factory=TrialResources, description="per-trial reservation")
    max_concurrent_trials: int | None = Field(None, ge=1, description="cap on trials running at once")
    base: dict[str, Any] = Field(default_factory=dict, description="fixed dotted overrides applied first")
    params: dict[str, Distribution] = Field(min_length=1, description="dotted config key -> distribution")

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_has_type(cls, v: Any) -> Any:
        if isinstance(v, Mapping) and "type" not in v:
            raise ValueError(f"scheduler needs `type: asha` or `type: fifo`; got {dict(v)!r}")
        if isinstance(v, str):
            return {"type": v}
        return v

    @model_validator(mode="after")
    def _base_and_params_disjoint(self) -> TuneSpace:
        both = sorted(set(self.base) & set(self.params))
        if both:
            raise ValueError(f"keys {both} are both fixed in `base` and sampled in `params`; keep one")
        return self


# ---------------------------------------------------------------- loading and checking


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = e["loc"]
        if len(loc) >= 2 and loc[0] == "params":
            where = f"params[{loc[1]!r}]"
        else:
            where = ".".join(str(p) for p in loc) or "<top>"
        if e["type"] == "extra_forbidden":
            known = ", ".join(TuneSpace.model_fields) if len(loc) == 1 else "see raymh/tune/space.py"
            msg = f"unknown field (check the spelling; known: {known})"
        elif e["type"] == "missing":
            msg = "required field is missing"
        else:
            msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


def _base_dict(base_config: ExperimentConfig | Mapping[str, Any] | str) -> dict[str, Any]:
    if isinstance(base_config, ExperimentConfig):
        return base_config.model_dump(mode="json")
    if isinstance(base_config, str):
        return load_config_dict(base_config)
    if isinstance(base_config, Mapping):
        return copy.deepcopy(dict(base_config))
    raise TypeError(
        f"base_config must be an ExperimentConfig, a dict or a preset name, got {type(base_config)}"
    )


def _with_dotted(data: dict[str, Any], items: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `data` with dotted keys set; a mapping value merges into an existing section."""
    out = copy.deepcopy(data)
    for key, value in items.items():
        if isinstance(value, Mapping):
            current = _get_dotted(out, key)
            if isinstance(current, dict):
                value = deep_merge(current, dict(value))
        set_dotted(out, key, value)
    return out


def _get_dotted(data: Any, key: str) -> Any:
    node = data
    for part in key.split("."):
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def parse_space(raw: Any, *, where: str = "tune space") -> TuneSpace:
    """Validate the structure of a space (a dict read from YAML); does not look at the config."""
    if not isinstance(raw, Mapping):
        raise TuneSpaceError(f"{where}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return TuneSpace.model_validate(dict(raw))
    except ValidationError as e:
        raise TuneSpaceError(f"{where} is invalid:\n{_format_validation_error(e)}") from None


def check_space(
    space: TuneSpace, base_config: ExperimentConfig | Mapping[str, Any] | str, *, where: str = "tune space"
) -> dict[str, Any]:
    """Apply `base`, then every value each param can take, to the base config; return the based dict."""
    try:
        based = _with_dotted(_base_dict(base_config), space.base)
        config_from_dict(based, where="base config")
    except ConfigError as e:
        raise TuneSpaceError(
            f"{where}: `base` {space.base!r} does not give a valid config; fix the base overrides:\n{e}"
        ) from None
    problems = []
    for key, dist in space.params.items():
        for value in dist.probe_values():
            try:
                config_from_dict(_with_dotted(based, {key: value}), where=f"config with {key}={value!r}")
            except ConfigError as e:
                detail = str(e).split("\n", 1)[-1].strip()
                fix = (
                    "check the key's spelling (`raymh config show` lists the keys)"
                    if "unknown key" in detail or "not a section" in detail
                    else f"keep the {dist.kind} values inside what the key allows"
                )
                problems.append(
                    f"  params[{key!r}]: {dist.kind} value {value!r} is not valid for this config key: "
                    f"{detail}; {fix}"
                )
                break
    if problems:
        raise TuneSpaceError(f"{where} does not fit the config:\n" + "\n".join(problems))
    return based


def load_space(path: str | Path, base_config: ExperimentConfig | Mapping[str, Any] | str) -> TuneSpace:
    """Read and fully check a space file against a base config (preset name, dict or ExperimentConfig)."""
    path = Path(path)
    if not path.is_file():
        raise TuneSpaceError(
            f"tune space file {str(path)!r} does not exist; shipped spaces are in tune_spaces/"
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise TuneSpaceError(f"tune space {str(path)!r}: not valid YAML: {e}") from None
    space = parse_space(raw, where=f"tune space {str(path)!r}")
    check_space(space, base_config, where=f"tune space {str(path)!r}")
    return space


def apply_base(space: TuneSpace, base_config: ExperimentConfig | Mapping[str, Any] | str) -> dict[str, Any]:
    """The base config dict with the space's fixed `base` overrides applied (what trials start from)."""
    return check_space(space, base_config)


def with_overrides(
    space: TuneSpace, *, num_samples: int | None = None, scheduler: Literal["asha", "fifo"] | None = None
) -> TuneSpace:
    """A copy with command-line choices applied (`raymh tune --num-samples/--scheduler`), re-validated."""
    data = space.model_dump()
    if num_samples is not None:
        data["num_samples"] = num_samples
    if scheduler is not None and scheduler != space.scheduler.type:
        data["scheduler"] = {"type": scheduler}
    data["params"] = {k: {d.kind: list(d.args)} for k, d in space.params.items()}
    return parse_space(data, where="tune space with command-line overrides")


# ---------------------------------------------------------------- Ray Tune objects


def to_tune_param_space(space: TuneSpace) -> dict[str, Any]:
    """`ray.tune` search-space objects keyed by dotted config key (a Tuner's `param_space`)."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, dist in space.params.items():
        a = dist.args
        if dist.kind == "choice":
            out[key] = tune.choice(list(a))
        elif dist.kind == "grid_search":
            out[key] = tune.grid_search(list(a))
        elif dist.kind == "uniform":
            out[key] = tune.uniform(float(a[0]), float(a[1]))
        elif dist.kind == "loguniform":
            out[key] = tune.loguniform(float(a[0]), float(a[1]))
        else:
            out[key] = tune.randint(int(a[0]), int(a[1]))
    return out


def trial_config(base_dict: Mapping[str, Any], sample: Mapping[str, Any]) -> ExperimentConfig:
    """Deep-merge one trial's sample (dotted keys) into the base config dict and re-validate it."""
    try:
        return config_from_dict(_with_dotted(dict(base_dict), sample), where=f"trial config {dict(sample)!r}")
    except ConfigError as e:
        raise TuneSpaceError(str(e)) from None


def asha_max_t(space: TuneSpace, config: ExperimentConfig | None = None) -> int | None:
    """ASHA's max_t: the space's own, else the number of reports a run makes (ceil(iters / eval_every))."""
    if isinstance(space.scheduler, AshaSpec) and space.scheduler.max_t is not None:
        return space.scheduler.max_t
    if config is None:
        return None
    return math.ceil(config.train.iters / config.train.eval_every)


def make_scheduler(space: TuneSpace, *, config: ExperimentConfig | None = None):
    """ASHAScheduler(metric, mode, grace_period, reduction_factor, max_t) or FIFOScheduler.

    ASHA carries `metric` and `mode`: do not pass them to `TuneConfig` as well (Tune refuses both);
    `tune_config_kwargs` does the right thing for either scheduler.
    """
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    spec = space.scheduler
    if isinstance(spec, FifoSpec):
        return FIFOScheduler()
    max_t = asha_max_t(space, config)
    if max_t is not None and spec.grace_period > max_t:
        raise TuneSpaceError(
            f"scheduler.grace_period {spec.grace_period} exceeds max_t {max_t} (reports per trial = "
            f"ceil(train.iters / train.eval_every)); lower grace_period or raise train.iters"
        )
    kwargs: dict[str, Any] = {"max_t": max_t} if max_t is not None else {}
    return ASHAScheduler(
        time_attr="training_iteration",
        metric=space.metric,
        mode=space.mode,
        grace_period=spec.grace_period,
        reduction_factor=spec.reduction_factor,
        brackets=spec.brackets,
        **kwargs,
    )


def tune_config_kwargs(space: TuneSpace, *, config: ExperimentConfig | None = None) -> dict[str, Any]:
    """Keyword arguments for `ray.tune.TuneConfig` (scheduler, num_samples, metric/mode where allowed)."""
    out: dict[str, Any] = {
        "scheduler": make_scheduler(space, config=config),
        "num_samples": space.num_samples,
    }
    if isinstance(space.scheduler, FifoSpec):
        out.update(metric=space.metric, mode=space.mode)
    if space.max_concurrent_trials is not None:
        out["max_concurrent_trials"] = space.max_concurrent_trials
    return out


def trial_resources(space: TuneSpace) -> dict[str, float]:
    """Per-trial resources for `tune.with_resources` ({"cpu": .., "gpu": ..})."""
    return {"cpu": space.resources.cpu, "gpu": space.resources.gpu}
