"""SampleDropout: masks keyed by the sample in a training step, nn.Dropout everywhere else."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raymh.model import MultiHeadDeepLab
from raymh.model.dropout import SampleDropout, sample_keys
from raymh.streams import sample_seed


def test_without_keys_it_is_nn_dropout():
    x = torch.randn(4, 8, 3, 3)
    keyed, plain = SampleDropout(0.3).train(), nn.Dropout(0.3).train()
    torch.manual_seed(1)
    a = keyed(x)
    torch.manual_seed(1)
    assert torch.equal(a, plain(x))
    assert torch.equal(keyed.eval()(x), x)


def test_a_samples_mask_follows_its_key_not_its_row_or_batch():
    torch.manual_seed(0)
    x = torch.randn(6, 16, 4, 4)
    layer = SampleDropout(0.5).train()
    keys = [sample_seed(0, "dropout", domain="a", part=0, index=i, step=3) for i in range(6)]
    with sample_keys(layer, keys):
        whole = layer(x)
    with sample_keys(layer, keys[3:] + keys[:3]):  # the same samples in another order, in two forwards
        parts = torch.cat([layer(torch.cat([x[3:], x[:3]])[:2]), layer(torch.cat([x[3:], x[:3]])[2:])])
    assert torch.equal(torch.cat([parts[3:], parts[:3]]), whole)
    kept = whole != 0
    assert 0.3 < kept.float().mean() < 0.7 and torch.allclose(whole[kept], x[kept] * 2)
    assert not torch.equal(kept[0], kept[1])  # samples differ
    with sample_keys(layer, [sample_seed(0, "dropout", domain="a", part=0, index=0, step=4)] * 6):
        assert not torch.equal(layer(x)[0] != 0, kept[0])  # the step is in the key


def test_keys_must_match_the_rows():
    layer = SampleDropout(0.1).train()
    with pytest.raises(RuntimeError, match="sample keys"), sample_keys(layer, [1, 2]):
        layer(torch.randn(3, 2, 2, 2))
    with pytest.raises(RuntimeError, match="used 1 of the 2"), sample_keys(layer, [1, 2]):
        layer(torch.randn(1, 2, 2, 2))
    assert layer._keys is None  # cleared on the way out


def test_fp32_and_fp64_models_share_masks_and_the_state_dict_is_unchanged():
    layer = SampleDropout(0.5).train()
    x = torch.randn(2, 8, 3, 3)
    with sample_keys(layer, [7, 8]):
        a = layer(x)
    with sample_keys(layer, [7, 8]):
        b = layer(x.double())
    assert torch.equal(a != 0, b != 0)
    model = MultiHeadDeepLab({"a": 3}, backbone="resnet18", head_depth=1, proj_dim=8)
    assert isinstance(model.aspp.project[1], SampleDropout)
    assert not any("project.1" in k for k in model.state_dict())


def test_sample_seed_names_the_sample():
    base = dict(domain="a", part=1, index=2, step=3)
    seeds = {sample_seed(0, "dropout", **base)}
    for change in ({"domain": "b"}, {"part": 2}, {"index": 3}, {"step": 4}):
        seeds.add(sample_seed(0, "dropout", **{**base, **change}))
    seeds.add(sample_seed(1, "dropout", **base))
    assert len(seeds) == 6 and sample_seed(0, "dropout", **base) == sample_seed(0, "dropout", **base)
    with pytest.raises(ValueError, match="purpose"):
        sample_seed(0, "nope", **base)
