"""DCLoss diagnostics: pseudo-label accuracy against the crops' true labels, similarity statistics, and the
labels that travel with the unlabeled crops (for the diagnostics only)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raymh.config import load_config
from raymh.data.transforms import overlap_crop_pair
from raymh.losses.crops import dc_loss_from_crops, overlap_anchors
from raymh.losses.diagnostics import anchor_pick, pseudo_label_accuracy, similarity_stats
from raymh.model import MultiHeadDeepLab
from raymh.train.step import dc_weight_at, mix_loss_step


def _logits(pred: list[list[int]], conf_high: list[list[bool]], classes: int = 3) -> torch.Tensor:
    """(1, C, h, w) logits whose argmax is `pred`, with max softmax ~0.98 where conf_high else ~0.5."""
    h, w = len(pred), len(pred[0])
    out = torch.zeros(1, classes, h, w)
    for i in range(h):
        for j in range(w):
            out[0, pred[i][j], i, j] = 5.0 if conf_high[i][j] else 0.7
    return out


def test_pseudo_label_accuracy_counts_cells_against_the_true_labels():
    # 2x2 cells of 8x8 pixels: true labels [[0, 1], [2, ignore]]
    labels = torch.full((1, 16, 16), 255, dtype=torch.long)
    labels[0, :8, :8], labels[0, :8, 8:], labels[0, 8:, :8] = 0, 1, 2
    logits = _logits(pred=[[0, 2], [2, 1]], conf_high=[[True, True], [False, True]])
    acc = pseudo_label_accuracy(logits, labels, gamma=0.75)
    # counted cells: (0,0) right, (0,1) wrong, (1,0) right -> 2/3; confident counted: (0,0) right, (0,1) wrong
    assert acc["cells"] == 3 and acc["confident"] == 2
    assert acc["acc"] == pytest.approx(2 / 3)
    assert acc["acc_confident"] == pytest.approx(1 / 2)


def test_pseudo_label_accuracy_reads_the_centre_pixel_of_each_cell_and_is_nan_without_labels():
    labels = torch.zeros(1, 8, 16, dtype=torch.long)
    labels[0, 4, 4] = 1  # the centre of cell (0, 0) decides it
    logits = _logits(pred=[[1, 0]], conf_high=[[True, True]])
    assert pseudo_label_accuracy(logits, labels, gamma=0.5)["acc"] == 1.0
    none = pseudo_label_accuracy(logits, torch.full((1, 8, 16), 255), gamma=0.5)
    assert none["cells"] == 0 and math.isnan(none["acc"]) and math.isnan(none["acc_confident"])
    with pytest.raises(ValueError, match="8x the logits"):
        pseudo_label_accuracy(logits, torch.zeros(1, 8, 8, dtype=torch.long), gamma=0.5)


def test_similarity_stats_hardest_negative_skips_same_label_negatives():
    a1 = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    a2 = F.normalize(torch.tensor([[1.0, 1.0], [0.0, 1.0]]), dim=1)
    y1 = torch.tensor([0, 1])
    neg = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=1)
    neg_labels = torch.tensor([0, 1, 1])
    out = similarity_stats(a1, a2, y1, neg, neg_labels)
    assert out["pos_sim"] == pytest.approx((math.sqrt(0.5) + 1.0) / 2)
    # anchor 0 (label 0): negatives of label 1 -> max(0.6, 0.0); anchor 1 (label 1): label-0 negative -> 0.0
    assert out["hard_neg_sim"] == pytest.approx((0.6 + 0.0) / 2)


def _partner_case(flip2: bool) -> dict:
    """One pair of 1x2-cell crops: the anchor is crop 1's cell 0, its partner crop 2's cell 1. The partner
    (label 1, similarity 0.8) is the most similar cell of another pseudo-label than the anchor's (label 0);
    the only other label-1 cell (crop 1's cell 1) has similarity 0."""
    proj1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)  # cell 0 = anchor, cell 1 label 1
    proj2 = torch.tensor([[0.6, -0.8], [0.8, 0.6]]).T.reshape(1, 2, 1, 2)  # cell 0 label 0, cell 1 = partner
    logits1 = torch.tensor([[5.0, 0.0], [0.0, 5.0]]).T.reshape(1, 2, 1, 2)  # labels [0, 1]
    logits2 = torch.tensor([[5.0, 0.0], [0.0, 5.0]]).T.reshape(1, 2, 1, 2)  # labels [0, 1]
    if flip2:  # crop 2 fed flipped: the same cells once the flip is undone
        proj2, logits2 = proj2.flip(-1), logits2.flip(-1)
    return {
        "proj1": proj1, "proj2": proj2, "logits1": logits1, "logits2": logits2,
        "box1": torch.tensor([[0, 0, 8, 8]]), "box2": torch.tensor([[0, 8, 8, 16]]),
        "flip1": torch.tensor([False]), "flip2": torch.tensor([flip2]),
    }  # fmt: skip


@pytest.mark.parametrize("flip2", [False, True])
def test_hardest_negative_is_never_the_anchors_own_partner(flip2):
    case = _partner_case(flip2)
    x = overlap_anchors(**case)
    assert x["i1"].tolist() == [0] and x["i2"].tolist() == [3]  # crop 1's cells, then crop 2's
    assert torch.equal(x["neg"][x["i2"]], x["a2"]) and x["y2"].tolist() == [1]
    by_label = similarity_stats(x["a1"], x["a2"], x["y1"], x["neg"], x["neg_labels"])
    assert by_label["hard_neg_sim"] == pytest.approx(0.8)  # excluded by label only: the partner is the hardest
    exclude = torch.stack([x["i1"], x["i2"]], 1)
    by_index = similarity_stats(x["a1"], x["a2"], x["y1"], x["neg"], x["neg_labels"], exclude=exclude)
    assert by_index["hard_neg_sim"] == pytest.approx(0.0)  # the other label-1 cell
    assert by_index["pos_sim"] == pytest.approx(0.8)
    out = dc_loss_from_crops(**case, gamma=0.5, diagnostics=True)
    assert out["hard_neg_sim"] == pytest.approx(0.0) and out["pos_sim"] == pytest.approx(0.8)


def test_anchor_pick_spreads_over_the_world_and_splits_by_rank():
    whole = anchor_pick(10, 4)
    assert whole.tolist() == [0, 3, 6, 9]
    parts = [anchor_pick(10, 4, offset=o, count=c) + o for o, c in ((0, 4), (4, 3), (7, 3))]
    assert torch.cat(parts).tolist() == whole.tolist()
    assert anchor_pick(3, 512).tolist() == [0, 1, 2] and anchor_pick(0, 5).numel() == 0


def test_crop_pair_labels_follow_the_image_crops_and_flips():
    rng = np.random.default_rng(3)
    label = np.kron(rng.integers(0, 19, size=(5, 7)), np.ones((8, 8))).astype(np.uint8)  # 8x8 blocks
    image = np.repeat(label[..., None] * 10, 3, axis=2).astype(np.uint8)  # colour encodes the label
    for _ in range(10):
        out = overlap_crop_pair(
            image, label=label, rng=rng, crop_size=(32, 32), scale_range=(0.9, 1.6), photometric=False
        )
        for k in (1, 2):
            img, lab, valid = out[f"image{k}"], out[f"label{k}"], out[f"valid{k}"]
            # scaling uses bilinear for the image and nearest for the label: compare where a pixel's
            # neighbourhood is flat (same label around it), and padding is ignore
            flat = np.zeros_like(valid)
            flat[1:-1, 1:-1] = (lab[1:-1, 1:-1] == lab[:-2, 1:-1]) & (lab[1:-1, 1:-1] == lab[2:, 1:-1])
            flat[1:-1, 1:-1] &= (lab[1:-1, 1:-1] == lab[1:-1, :-2]) & (lab[1:-1, 1:-1] == lab[1:-1, 2:])
            flat &= valid
            assert flat.any()
            np.testing.assert_array_equal(img[..., 0][flat], lab[flat].astype(np.uint8) * 10)
            assert (lab[~valid] == 255).all()


def test_step_logs_the_diagnostics_of_labelled_crops():
    torch.manual_seed(0)
    model = MultiHeadDeepLab({"a": 5}, backbone="resnet18", head_depth=1, proj_dim=16)
    g = torch.Generator().manual_seed(1)
    size = 64
    box = torch.tensor([[0, 0, size // 2, size]], dtype=torch.int32)
    label = torch.randint(0, 5, (1, size, size), generator=g)
    batch = {"a": {
        "labeled": {"image": torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=g),
                    "label": torch.randint(0, 5, (2, size, size), generator=g)},
        "unlabeled": {
            "image1": torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, generator=g),
            "image2": torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, generator=g),
            "box1": box, "box2": box.clone(), "flip1": torch.tensor([False]), "flip2": torch.tensor([False]),
            "valid1": torch.ones(1, size, size, dtype=torch.bool), "valid2": torch.ones(1, size, size, dtype=torch.bool),
            "label1": label.to(torch.uint8), "label2": label.to(torch.uint8),
        },
    }}  # fmt: skip
    cfg = load_config("quickstart", ["loss.dc_start_iter=0", "loss.gamma=0.1"])
    out = mix_loss_step(model, batch, cfg, step=0, dc_weight=dc_weight_at(0, cfg.loss), diagnostics=True)
    for key in ("passing/a", "pos_sim/a", "hard_neg_sim/a", "pseudo_acc/a", "pseudo_acc_confident/a"):
        assert key in out.stats, key
    assert 0.0 <= out.stats["pseudo_acc/a"] <= 1.0
    assert -1.0 <= out.stats["pos_sim/a"] <= 1.0 + 1e-5
    quiet = mix_loss_step(model, batch, cfg, step=0, dc_weight=dc_weight_at(0, cfg.loss))
    assert "pseudo_acc/a" not in quiet.stats and "pos_sim/a" not in quiet.stats
