"""The optimizer choice (SGD recipe / AdamW), its parameter groups and the poly schedule."""

from __future__ import annotations

import pytest
import torch

from raymh.config import ConfigError, load_config
from raymh.model import MultiHeadDeepLab
from raymh.train.optim import build_optimizer, poly_scheduler


@pytest.fixture(scope="module")
def model() -> MultiHeadDeepLab:
    return MultiHeadDeepLab({"a": 3}, backbone="resnet18", head_depth=1, proj_dim=8)


@pytest.mark.parametrize(("name", "cls"), [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_optimizer_kind_and_group_lrs(model, name, cls):
    cfg = load_config("quickstart", [f"optim.name={name}", "optim.lr=0.002", "optim.head_lr_mult=5"]).optim
    opt = build_optimizer(model, cfg)
    assert type(opt) is cls
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == pytest.approx({"backbone": 0.002, "head": 0.01})
    n_params = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_params == sum(p.numel() for p in model.parameters())
    if name == "adamw":
        assert opt.param_groups[0]["betas"][0] == cfg.momentum and opt.param_groups[0]["weight_decay"] == cfg.weight_decay


def test_unknown_optimizer_is_refused():
    with pytest.raises(ConfigError, match="optim.name"):
        load_config("quickstart", ["optim.name=lamb"])


def test_poly_schedule_per_iteration(model):
    opt = build_optimizer(model, load_config("quickstart", ["optim.lr=0.1", "optim.head_lr_mult=1"]).optim)
    sched = poly_scheduler(opt, total_iters=10, power=0.9)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.1 * (1 - t / 10) ** 0.9 for t in range(10)])
    assert opt.param_groups[0]["lr"] == 0.0  # the end of the schedule
