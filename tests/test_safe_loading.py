"""Checkpoints load with torch.load(weights_only=True): RNG states survive, pickle payloads are refused unrun."""

from __future__ import annotations

import builtins
import random

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from raymh.cli import main
from raymh.config import load_config, to_yaml
from raymh.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from raymh.infer.loading import load_bundle
from raymh.model import MultiHeadDeepLab
from raymh.train.checkpoint import (
    UnsafeCheckpointError,
    find_checkpoint,
    inference_record,
    load_state,
    read_state,
    save_state,
)
from raymh.train.optim import build_optimizer, poly_scheduler


def _save(directory, *, seed: int = 0):
    cfg = load_config("quickstart", ["model.backbone=resnet18", "model.head_depth=1"])
    torch.manual_seed(seed)
    model = MultiHeadDeepLab({"cityscapes": 19, "coarse": 3}, backbone="resnet18", head_depth=1)
    opt = build_optimizer(model, cfg.optim)
    sched = poly_scheduler(opt, total_iters=10, power=0.9)
    model(torch.randn(2, 3, 32, 32), "coarse")["logits"].sum().backward()
    opt.step()
    sched.step()
    domains = {
        "cityscapes": {"classes": CITYSCAPES_CLASSES, "palette": CITYSCAPES_PALETTE, "label_format": "cityscapes"},
        "coarse": {"classes": ["flat", "sky", "thing"], "palette": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]},
    }
    save_state(
        directory, model=model, optimizer=opt, scheduler=sched, step=1, best_score=0.25, config_yaml=to_yaml(cfg),
        inference=inference_record(cfg.model.model_dump(mode="json"), domains, precision="fp32"),
    )  # fmt: skip
    return model, opt, sched


def test_state_round_trips_with_weights_only_including_rng_streams(tmp_path):
    model, opt, sched = _save(tmp_path / "ckpt")
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_state(tmp_path / "ckpt", model=model, optimizer=opt, scheduler=sched, step=1, best_score=0.25,
               config_yaml="", inference=None)  # fmt: skip
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    restored = load_state(tmp_path / "ckpt", model=model, optimizer=opt, scheduler=sched)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert restored["step"] == 1 and restored["best_score"] == 0.25
    assert opt.state_dict()["param_groups"][0]["lr"] == sched.get_last_lr()[0]


def test_a_checkpoint_carries_what_inference_needs(tmp_path):
    model, _, _ = _save(tmp_path / "ckpt")
    bundle = load_bundle(str(tmp_path / "ckpt"))
    assert bundle.domain("coarse")["classes"] == ["flat", "sky", "thing"]
    assert bundle.domain("cityscapes")["palette"][0] == [128, 64, 128]
    assert bundle.domain("cityscapes")["label_format"] == "cityscapes"
    assert bundle.info["model"]["backbone"] == "resnet18" and bundle.info["raymh_version"]
    assert bundle.info["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    rebuilt = bundle.build()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(rebuilt(x, "coarse")["logits"], model.eval()(x, "coarse")["logits"])
    with pytest.raises(ValueError, match=r"unknown domain 'bdd'.*\['cityscapes', 'coarse'\]"):
        bundle.domain("bdd")


class _CreatesAFile:
    """A pickle payload: unpickling it would call open(path, 'w'), creating the file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return builtins.open, (self.path, "w")


def test_a_checkpoint_whose_pickle_would_create_a_file_is_refused_unrun(tmp_path):
    marker = tmp_path / "pwned.txt"
    run = tmp_path / "run"
    ckpt = run / "checkpoint_000000"
    ckpt.mkdir(parents=True)
    torch.save({"model": {}, "step": 3, "payload": _CreatesAFile(str(marker))}, ckpt / "state.pt")
    (ckpt / "config.yaml").write_text("")
    with pytest.raises(UnsafeCheckpointError, match=r"state\.pt is not a plain weights file.*did not run it"):
        read_state(ckpt)
    with pytest.raises(UnsafeCheckpointError):
        find_checkpoint(str(run))  # scores by step when there is no metrics.json: a safe load too
    with pytest.raises(UnsafeCheckpointError):
        load_bundle(str(ckpt))
    result = CliRunner().invoke(main, ["eval", "--checkpoint", str(ckpt)])
    assert result.exit_code == 1 and "not a plain weights file" in result.output
    result = CliRunner().invoke(main, ["export", "--model", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 1 and "not a plain weights file" in result.output
    assert not marker.exists()
