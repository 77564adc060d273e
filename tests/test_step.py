"""The Mix Loss step: lambda 0 is exactly a CE-only loop; with lambda > 0 every domain gets its DCLoss term."""

from __future__ import annotations

import copy

import pytest
import torch

from raymh.config import load_config
from raymh.losses import cross_entropy
from raymh.model import MultiHeadDeepLab, normalize_uint8
from raymh.model.dropout import sample_keys
from raymh.streams import sample_seed
from raymh.train.step import dc_weight_at, mix_loss_step

CLASSES = {"a": 19, "b": 7}


def _batch(seed: int, n_lab: int = 2, n_unl: int = 1, size: int = 64) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for d, c in CLASSES.items():
        box = torch.tensor([[0, 0, size // 2, size]] * n_unl, dtype=torch.int32)
        out[d] = {
            "labeled": {
                "image": torch.randint(0, 256, (n_lab, 3, size, size), dtype=torch.uint8, generator=g),
                "label": torch.randint(0, c, (n_lab, size, size), generator=g),
            },
            "unlabeled": {
                "image1": torch.randint(0, 256, (n_unl, 3, size, size), dtype=torch.uint8, generator=g),
                "image2": torch.randint(0, 256, (n_unl, 3, size, size), dtype=torch.uint8, generator=g),
                "box1": box, "box2": box.clone(),
                "flip1": torch.tensor([False] * n_unl), "flip2": torch.tensor([True] * n_unl),
                "valid1": torch.ones(n_unl, size, size, dtype=torch.bool),
                "valid2": torch.ones(n_unl, size, size, dtype=torch.bool),
            },
        }  # fmt: skip
    return out


def _cfg(**over):
    return load_config("quickstart", [f"{k}={v}" for k, v in over.items()])


def _model():
    torch.manual_seed(0)
    return MultiHeadDeepLab(CLASSES, backbone="resnet18", head_depth=1, proj_dim=16)


def test_lambda_zero_gives_the_gradients_of_a_ce_only_loop():
    torch.set_num_threads(2)
    batch = _batch(0)
    m1, m2 = _model(), _model()
    m2.load_state_dict(m1.state_dict())
    cfg = _cfg(**{"loss.dc_weight": 0.0})
    out = mix_loss_step(m1, batch, cfg, step=500, dc_weight=0.0)
    out.loss.backward()
    # the CE-only loop, written out: one trunk pass over the labeled images of both domains, each image's
    # dropout masks from its own stream (domain, part 0 = labeled, its index in the batch, the step)
    x = {d: normalize_uint8(b["labeled"]["image"]) for d, b in batch.items()}
    keys = [
        sample_seed(cfg.train.seed, "dropout", domain=d, part=0, index=i, step=500)
        for d in batch for i in range(x[d].shape[0])
    ]
    with sample_keys(m2, keys):
        outs = m2.forward_domains(x)
    ce = sum(cross_entropy(outs[d]["logits"], batch[d]["labeled"]["label"]) for d in CLASSES)
    ce.backward()
    assert out.loss.item() == pytest.approx(ce.item(), rel=1e-6)
    for (name, p1), (_, p2) in zip(m1.named_parameters(), m2.named_parameters(), strict=True):
        g1 = p1.grad if p1.grad is not None else torch.zeros_like(p1)
        g2 = p2.grad if p2.grad is not None else torch.zeros_like(p2)
        assert torch.allclose(g1, g2, rtol=1e-5, atol=1e-7), name
    assert set(out.parts) == {"ce/a", "ce/b", "loss", "dc_weight"} and out.parts["dc_weight"] == 0.0


def test_with_lambda_every_domain_has_a_dc_term_and_per_domain_forward_agrees():
    batch = _batch(1)
    cfg = _cfg(**{"loss.dc_weight": 0.5, "loss.dc_start_iter": 0, "loss.gamma": 0.01})
    model = _model().eval()  # eval: BN statistics do not depend on how images are grouped
    joint = mix_loss_step(model, batch, cfg, step=0, dc_weight=dc_weight_at(0, cfg.loss))
    split = mix_loss_step(model, batch, _cfg(**{"loss.dc_weight": 0.5, "loss.dc_start_iter": 0, "loss.gamma": 0.01,
                                                 "train.forward": "per_domain"}), step=0, dc_weight=dc_weight_at(0, cfg.loss))  # fmt: skip
    assert {"dc/a", "dc/b", "ce/a", "ce/b"} <= set(joint.parts)
    assert {"passing/a", "passing/b"} == set(joint.stats)
    expected = sum(joint.parts[f"ce/{d}"] + 0.5 * joint.parts[f"dc/{d}"] for d in CLASSES)
    assert joint.parts["loss"] == pytest.approx(expected, rel=1e-5)
    assert split.parts["loss"] == pytest.approx(joint.parts["loss"], rel=1e-4)


def test_dc_weight_schedule():
    cfg = copy.deepcopy(_cfg(**{"loss.dc_weight": 0.2, "loss.dc_start_iter": 10, "loss.dc_rampup_iters": 4}).loss)
    assert [dc_weight_at(s, cfg) for s in (0, 9, 10, 11, 13, 100)] == pytest.approx([0, 0, 0.05, 0.1, 0.2, 0.2])
