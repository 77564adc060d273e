"""Tune space files: parsing, checking against the config model, mapping to Ray Tune, trial configs."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import yaml

from raymh.config import ExperimentConfig, load_config, load_config_dict
from raymh.tune.space import (
    TuneSpace,
    TuneSpaceError,
    apply_base,
    load_space,
    make_scheduler,
    parse_space,
    to_tune_param_space,
    trial_config,
    tune_config_kwargs,
    with_overrides,
)

SPACES = Path(__file__).resolve().parents[1] / "tune_spaces"
BASE_OF = {"quick.yaml": "quickstart"}  # every other shipped space sweeps the paper preset


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _shipped() -> list[Path]:
    return sorted(SPACES.glob("*.yaml"))


def test_the_four_spaces_are_shipped():
    assert {p.name for p in _shipped()} >= {
        "dc_weight_gamma.yaml",
        "head_depth.yaml",
        "paper_grid.yaml",
        "quick.yaml",
    }


@pytest.mark.parametrize("path", _shipped(), ids=lambda p: p.name)
def test_every_shipped_space_loads_against_its_base(path: Path):
    space = load_space(path, BASE_OF.get(path.name, "paper"))
    assert isinstance(space, TuneSpace)
    assert space.params
    # the format is documented at the top of each file
    assert path.read_text().startswith("# Tune space (format: raymh/tune/space.py)")


def test_paper_grid_is_supervised_vs_semi_by_label_ratio():
    space = load_space(SPACES / "paper_grid.yaml", "paper")
    assert space.params["loss.dc_weight"].kind == "grid_search"
    assert space.params["loss.dc_weight"].args == (0.0, 0.1)
    assert space.params["data.labeled_fraction"].args == (0.125, 0.25, 1.0)


def test_quick_space_base_shortens_the_run():
    space = load_space(SPACES / "quick.yaml", "quickstart")
    based = apply_base(space, "quickstart")
    assert based["train"]["iters"] == space.base["train.iters"]
    assert based["train"]["iters"] < load_config("quickstart").train.iters
    # the other train settings of the preset survive the dotted base overrides
    assert based["train"]["eval_every"] == space.base["train.eval_every"]
    assert based["model"]["backbone"] == load_config("quickstart").model.backbone


# ---------------------------------------------------------------- failures name the key


def test_unknown_config_key_fails_naming_it(tmp_path: Path):
    path = _write(tmp_path, {"params": {"loss.dcweight": {"uniform": [0.1, 0.2]}}})
    with pytest.raises(TuneSpaceError, match=r"params\['loss\.dcweight'\].*unknown key.*spelling"):
        load_space(path, "quickstart")


def test_value_outside_what_the_key_allows_fails_naming_it(tmp_path: Path):
    path = _write(tmp_path, {"params": {"loss.gamma": {"uniform": [0.5, 1.5]}}})
    with pytest.raises(TuneSpaceError, match=r"params\['loss\.gamma'\].*1\.5"):
        load_space(path, "quickstart")


def test_bad_choice_value_fails(tmp_path: Path):
    path = _write(tmp_path, {"params": {"model.head_depth": {"choice": [1, 0]}}})
    with pytest.raises(TuneSpaceError, match=r"params\['model\.head_depth'\]: choice value 0"):
        load_space(path, "quickstart")


def test_randint_checks_its_largest_reachable_value(tmp_path: Path):
    # head_depth allows 1..8; randint's high is exclusive, so [1, 9] is fine and [1, 10] is not
    ok = _write(tmp_path, {"params": {"model.head_depth": {"randint": [1, 9]}}})
    assert load_space(ok, "quickstart").params["model.head_depth"].probe_values() == [1, 8]
    bad = _write(tmp_path, {"params": {"model.head_depth": {"randint": [1, 10]}}})
    with pytest.raises(TuneSpaceError, match=r"randint value 9"):
        load_space(bad, "quickstart")


@pytest.mark.parametrize(
    ("dist", "pattern"),
    [
        ({"uniform": [0.9, 0.5]}, r"inverted"),
        ({"loguniform": [0.3, 0.3]}, r"inverted or empty"),
        ({"loguniform": [0.0, 1.0]}, r"loguniform low must be > 0"),
        ({"uniform": [0.5]}, r"takes \[low, high\].*got 1 values"),
        ({"uniform": [0.1, 0.2, 0.3]}, r"got 3 values"),
        ({"normal": [0.0, 1.0]}, r"unknown distribution 'normal'"),
        ({"choice": []}, r"empty list"),
        ({"randint": [0.5, 3]}, r"integers"),
        ({"uniform": ["1e-2", 0.5]}, r"YAML read '1e-2' as a string"),
        ({"uniform": [0.1, 0.2], "choice": [1]}, r"one-key mapping"),
        ([0.1, 0.2], r"one-key mapping"),
    ],
)
def test_malformed_distribution_fails_naming_the_key(tmp_path: Path, dist, pattern: str):
    path = _write(tmp_path, {"params": {"loss.gamma": dist}})
    with pytest.raises(TuneSpaceError, match=r"params\['loss\.gamma'\]") as info:
        load_space(path, "quickstart")
    assert re.search(pattern, str(info.value)), str(info.value)


def test_unknown_top_level_field_fails_naming_it(tmp_path: Path):
    path = _write(tmp_path, {"num_sample": 4, "params": {"loss.gamma": {"uniform": [0.5, 0.9]}}})
    with pytest.raises(TuneSpaceError, match=r"num_sample: unknown field.*num_samples"):
        load_space(path, "quickstart")


def test_scheduler_needs_a_type_and_known_fields(tmp_path: Path):
    params = {"loss.gamma": {"uniform": [0.5, 0.9]}}
    with pytest.raises(TuneSpaceError, match=r"scheduler needs `type: asha`"):
        load_space(_write(tmp_path, {"scheduler": {"grace_period": 1}, "params": params}), "quickstart")
    with pytest.raises(TuneSpaceError, match=r"scheduler\.asha\.grace:"):
        load_space(
            _write(tmp_path, {"scheduler": {"type": "asha", "grace": 1}, "params": params}), "quickstart"
        )
    with pytest.raises(TuneSpaceError, match=r"reduction_factor"):
        parse_space({"scheduler": {"type": "asha", "reduction_factor": 1}, "params": params})


def test_bad_base_override_fails_naming_it(tmp_path: Path):
    path = _write(tmp_path, {"base": {"train.iter": 5}, "params": {"loss.gamma": {"uniform": [0.5, 0.9]}}})
    with pytest.raises(TuneSpaceError, match=r"(?s)`base`.*train\.iter: unknown key"):
        load_space(path, "quickstart")


def test_key_both_fixed_and_sampled_fails():
    with pytest.raises(TuneSpaceError, match=r"both fixed in `base` and sampled"):
        parse_space({"base": {"loss.gamma": 0.7}, "params": {"loss.gamma": {"uniform": [0.5, 0.9]}}})


def test_missing_file_and_non_mapping_fail_clearly(tmp_path: Path):
    with pytest.raises(TuneSpaceError, match=r"does not exist"):
        load_space(tmp_path / "nope.yaml", "quickstart")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(TuneSpaceError, match=r"expected a mapping"):
        load_space(path, "quickstart")


def test_base_config_may_be_a_config_object_or_a_dict(tmp_path: Path):
    path = _write(tmp_path, {"params": {"loss.gamma": {"uniform": [0.5, 0.9]}}})
    cfg = load_config("quickstart")
    assert load_space(path, cfg) == load_space(path, load_config_dict("quickstart"))


# ---------------------------------------------------------------- Ray Tune objects and trials


def test_to_tune_param_space_builds_the_right_tune_objects():
    from ray.tune.search.sample import Categorical, Float, Integer, LogUniform, Uniform

    space = parse_space(
        {
            "params": {
                "loss.dc_weight": {"loguniform": [0.01, 1.0]},
                "loss.gamma": {"uniform": [0.5, 0.95]},
                "model.head_depth": {"choice": [1, 2, 3]},
                "data.labeled_fraction": {"grid_search": [0.125, 1.0]},
                "train.seed": {"randint": [0, 1000]},
            }
        }
    )
    ps = to_tune_param_space(space)
    assert set(ps) == set(space.params)
    lw = ps["loss.dc_weight"]
    assert isinstance(lw, Float) and isinstance(lw.get_sampler(), LogUniform)
    assert (lw.lower, lw.upper) == (0.01, 1.0)
    g = ps["loss.gamma"]
    assert isinstance(g, Float) and isinstance(g.get_sampler(), Uniform) and (g.lower, g.upper) == (0.5, 0.95)
    hd = ps["model.head_depth"]
    assert isinstance(hd, Categorical) and list(hd.categories) == [1, 2, 3]
    assert ps["data.labeled_fraction"] == {"grid_search": [0.125, 1.0]}
    seed = ps["train.seed"]
    assert isinstance(seed, Integer) and (seed.lower, seed.upper) == (0, 1000)
    # samples fall inside the declared ranges
    for _ in range(20):
        assert 0.01 <= lw.sample() <= 1.0
        assert 0.5 <= g.sample() <= 0.95
        assert 0 <= seed.sample() < 1000


def test_trial_config_merges_and_revalidates():
    space = load_space(SPACES / "quick.yaml", "quickstart")
    base = apply_base(space, "quickstart")
    cfg = trial_config(base, {"loss.dc_weight": 0.2, "loss.gamma": 0.8, "model.head_depth": 1})
    assert isinstance(cfg, ExperimentConfig)
    assert (cfg.loss.dc_weight, cfg.loss.gamma, cfg.model.head_depth) == (0.2, 0.8, 1)
    assert cfg.loss.temperature == load_config("quickstart").loss.temperature  # untouched siblings survive
    assert cfg.train.iters == space.base["train.iters"]
    assert base["loss"]["dc_weight"] == load_config("quickstart").loss.dc_weight  # the base is not mutated
    with pytest.raises(TuneSpaceError, match=r"loss\.gamma"):
        trial_config(base, {"loss.gamma": 1.2})


def test_make_scheduler_asha_and_fifo():
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    cfg = load_config("quickstart", ["train.iters=100", "train.eval_every=30"])
    space = parse_space(
        {"scheduler": {"type": "asha", "grace_period": 2}, "params": {"loss.gamma": {"uniform": [0.5, 0.9]}}}
    )
    sched = make_scheduler(space, config=cfg)
    assert isinstance(sched, ASHAScheduler)
    assert (sched.metric, sched._mode) == ("val/miou_mean", "max")
    assert sched._max_t == math.ceil(100 / 30)  # reports per run: one per evaluation
    assert isinstance(make_scheduler(with_overrides(space, scheduler="fifo")), FIFOScheduler)
    with pytest.raises(TuneSpaceError, match=r"grace_period 2 exceeds max_t 1"):
        make_scheduler(space, config=load_config("quickstart", ["train.iters=10", "train.eval_every=10"]))


def test_tune_config_kwargs_passes_metric_once():
    from ray import tune

    params = {"loss.gamma": {"uniform": [0.5, 0.9]}}
    asha = tune_config_kwargs(parse_space({"num_samples": 3, "max_concurrent_trials": 1, "params": params}))
    assert "metric" not in asha and asha["num_samples"] == 3 and asha["max_concurrent_trials"] == 1
    fifo = tune_config_kwargs(parse_space({"scheduler": {"type": "fifo"}, "mode": "min", "params": params}))
    assert (fifo["metric"], fifo["mode"]) == ("val/miou_mean", "min")
    tune.TuneConfig(**asha)
    tune.TuneConfig(**fifo)


def test_with_overrides_keeps_params_and_revalidates():
    space = load_space(SPACES / "dc_weight_gamma.yaml", "paper")
    changed = with_overrides(space, num_samples=3, scheduler="fifo")
    assert changed.num_samples == 3 and changed.scheduler.type == "fifo"
    assert changed.params == space.params
    with pytest.raises(TuneSpaceError, match=r"num_samples"):
        with_overrides(space, num_samples=0)
