"""Losses: cross-entropy, the streamed DCLoss (vs the dense reference), crop alignment and the Mix Loss.

Every loss goes through one shared tester (LossContract): value on a hand-computed case, a float64
gradcheck, and shape/dtype errors whose messages say what is wrong.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from raymh.losses import (
    cross_entropy,
    dc_loss_from_crops,
    direction_masks,
    directional_contrastive_loss,
    mix_loss,
    overlap_anchors,
)
from raymh.losses.dense_reference import dense_dcloss

ROOT = Path(__file__).resolve().parents[1]


def unit(rows: int, dim: int, *, gen: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    """Random L2-normalised rows."""
    return F.normalize(torch.randn(rows, dim, generator=gen, dtype=torch.float64), dim=1).to(dtype)


def dc_case(*, n=40, n_neg=200, dim=8, classes=5, seed=0, dtype=torch.float32) -> dict:
    """A random DCLoss input (confidences U(0,1): a mix of masks on and off on both sides)."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "a1": unit(n, dim, gen=gen, dtype=dtype).requires_grad_(),
        "a2": unit(n, dim, gen=gen, dtype=dtype).requires_grad_(),
        "y1": torch.randint(classes, (n,), generator=gen),
        "y2": torch.randint(classes, (n,), generator=gen),
        "c1": torch.rand(n, generator=gen, dtype=torch.float64).to(dtype),
        "c2": torch.rand(n, generator=gen, dtype=torch.float64).to(dtype),
        "neg": unit(n_neg, dim, gen=gen, dtype=dtype),
        "neg_labels": torch.randint(classes, (n_neg,), generator=gen),
    }


ORDER = ("a1", "a2", "y1", "y2", "c1", "c2", "neg", "neg_labels")


def dcl(x: dict, **kw) -> torch.Tensor:
    """directional_contrastive_loss on a case dict."""
    return directional_contrastive_loss(*(x[k] for k in ORDER), **kw)


def loss_and_grads(fn, x: dict, **kw):
    """Loss value and gradients w.r.t. a1, a2."""
    loss = fn(*(x[k] for k in ORDER), **kw)
    g1, g2 = torch.autograd.grad(loss, [x["a1"], x["a2"]], allow_unused=True)
    return loss.detach(), g1, g2


def as_float64(x: dict) -> dict:
    """A float64 leaf copy of a case (the reference runs in float64)."""
    out = {k: (v.detach().double() if v.is_floating_point() else v) for k, v in x.items()}
    out["a1"].requires_grad_()
    out["a2"].requires_grad_()
    return out


# ---------------------------------------------------------------- the shared tester


class LossContract:
    """Every loss: value on a hand-computed case, float64 gradcheck, shape/dtype errors naming the problem."""

    def hand_case(self) -> tuple[torch.Tensor, float]:
        """(loss computed by the code, the same value written out by hand)."""
        raise NotImplementedError

    def grad_case(self) -> tuple[callable, tuple[torch.Tensor, ...]]:
        """(function of float64 tensors, inputs) for torch.autograd.gradcheck."""
        raise NotImplementedError

    def bad_cases(self) -> list[tuple[callable, type[Exception], str]]:
        """(call, exception type, regex the message must match)."""
        raise NotImplementedError

    def test_value_on_hand_computed_case(self):
        got, expected = self.hand_case()
        assert float(got.detach()) == pytest.approx(expected, rel=1e-6, abs=1e-7)

    def test_gradcheck(self):
        fn, inputs = self.grad_case()
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)

    def test_bad_inputs_raise_clear_errors(self):
        for call, exc, match in self.bad_cases():
            with pytest.raises(exc, match=match):
                call()


# ---------------------------------------------------------------- cross-entropy


class TestCrossEntropy(LossContract):
    def hand_case(self):
        # logits (1, 2, 1, 2) upsampled bilinearly (align_corners=False) to labels (1, 1, 4):
        # columns 0..3 sample source x = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1).
        left, right = (1.0, -1.0), (0.0, 2.0)
        logits = torch.tensor([[[[left[0], right[0]]], [[left[1], right[1]]]]])
        labels = torch.tensor([[[0, 1, 255, 1]]])
        weights = [(1.0, 0.0), (0.75, 0.25), (0.25, 0.75), (0.0, 1.0)]
        terms = []
        for col, (wl, wr) in enumerate(weights):
            z = [wl * left[c] + wr * right[c] for c in range(2)]
            lab = int(labels[0, 0, col])
            if lab != 255:
                terms.append(-(z[lab] - math.log(math.exp(z[0]) + math.exp(z[1]))))
        return cross_entropy(logits, labels), sum(terms) / len(terms)

    def grad_case(self):
        labels = torch.tensor([[[0, 2, 255, 1], [1, 1, 0, 255]]])
        logits = torch.randn(1, 3, 1, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        logits.requires_grad_()
        return (lambda z: cross_entropy(z, labels)), (logits,)

    def bad_cases(self):
        logits = torch.zeros(2, 3, 4, 4)
        return [
            (lambda: cross_entropy(logits, torch.zeros(2, 8, 8, dtype=torch.long).fill_(3)), ValueError, r"3.*C=3"),
            (lambda: cross_entropy(logits, torch.full((2, 8, 8), 7)), ValueError, r"label value 7.*C=3"),
            (lambda: cross_entropy(logits, torch.full((2, 8, 8), -1)), ValueError, r"label value -1"),
            (lambda: cross_entropy(logits[0], torch.zeros(2, 8, 8, dtype=torch.long)), ValueError, r"logits.*\(B, C, h, w\)"),
            (lambda: cross_entropy(logits, torch.zeros(2, 1, 8, 8, dtype=torch.long)), ValueError, r"labels.*\(B, H, W\)"),
            (lambda: cross_entropy(logits, torch.zeros(3, 8, 8, dtype=torch.long)), ValueError, r"batch size 3"),
            (lambda: cross_entropy(logits, torch.zeros(2, 8, 8)), TypeError, r"integer.*float32"),
            (lambda: cross_entropy(logits.long(), torch.zeros(2, 8, 8, dtype=torch.long)), ValueError, r"float"),
        ]  # fmt: skip

    def test_ignore_index_pixels_do_not_count(self):
        gen = torch.Generator().manual_seed(1)
        logits = torch.randn(2, 4, 6, 6, generator=gen)
        labels = torch.randint(4, (2, 6, 6), generator=gen)
        ignored = labels.clone()
        ignored[:, :3] = 255
        keep = ignored != 255
        logp = logits.log_softmax(1).permute(0, 2, 3, 1)[keep]
        expected = -logp.gather(1, labels[keep][:, None]).mean()
        torch.testing.assert_close(cross_entropy(logits, ignored), expected)
        assert not torch.isclose(cross_entropy(logits, labels), expected)
        other = ignored.clone()
        other[:, :3] = (labels[:, :3] + 1) % 4  # what sits under an ignored pixel must not matter
        assert cross_entropy(logits, ignored) == cross_entropy(logits, torch.where(keep, other, ignored))

    def test_upsamples_bilinearly_to_label_size(self):
        gen = torch.Generator().manual_seed(2)
        logits = torch.randn(1, 3, 4, 5, generator=gen, requires_grad=True)
        labels = torch.randint(3, (1, 16, 20), generator=gen)
        up = F.interpolate(logits, size=(16, 20), mode="bilinear", align_corners=False)
        torch.testing.assert_close(cross_entropy(logits, labels), F.cross_entropy(up, labels))

    def test_all_ignored_gives_zero_with_zero_grad(self):
        logits = torch.randn(1, 3, 2, 2, requires_grad=True)
        loss = cross_entropy(logits, torch.full((1, 8, 8), 255))
        loss.backward()
        assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))

    def test_computes_in_fp32(self):
        logits = torch.randn(1, 3, 2, 2).bfloat16()
        labels = torch.randint(3, (1, 2, 2))
        loss = cross_entropy(logits, labels)
        assert loss.dtype == torch.float32
        torch.testing.assert_close(loss, F.cross_entropy(logits.float(), labels))


# ---------------------------------------------------------------- directional contrastive loss


class TestDirectionalContrastiveLoss(LossContract):
    def hand_case(self):
        # D=2, T=0.5, gamma 0.75. M1 = (c2 > .75) & (c1 < c2) -> anchors 0, 2; M2 -> anchor 1.
        t = 0.5
        x = {
            "a1": torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], requires_grad=True),
            "a2": torch.tensor([[0.8, 0.6], [1.0, 0.0], [0.0, 1.0]], requires_grad=True),
            "y1": torch.tensor([0, 1, 2]),
            "y2": torch.tensor([0, 1, 1]),
            "c1": torch.tensor([0.2, 0.9, 0.5]),
            "c2": torch.tensor([0.9, 0.3, 0.8]),
            "neg": torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]),
            "neg_labels": torch.tensor([0, 1, 2]),
        }
        e = math.exp
        # side 1, anchor 0: a=(1,0), pos=(.8,.6): <.,.>=0.8; negatives with label != 0: (0,1) -> 0, (-1,0) -> -1
        l0 = -math.log(e(0.8 / t) / (e(0.8 / t) + e(0.0 / t) + e(-1.0 / t)))
        # side 1, anchor 2: a=(.6,.8), pos=(0,1): 0.8; label != 2: (1,0) -> 0.6, (0,1) -> 0.8
        l2 = -math.log(e(0.8 / t) / (e(0.8 / t) + e(0.6 / t) + e(0.8 / t)))
        # side 2, anchor 1: a=(1,0), pos=a1_1=(0,1): 0; label != 1: (1,0) -> 1, (-1,0) -> -1
        m1 = -math.log(e(0.0 / t) / (e(0.0 / t) + e(1.0 / t) + e(-1.0 / t)))
        return dcl(x, temperature=t), (l0 + l2) / 2 + m1

    def grad_case(self):
        # Only side 1 is on (c1 <= gamma everywhere), so a2 enters as the stop-gradient positive only and the
        # numerical derivative w.r.t. a1 is the analytic one. Confidences are far from the mask borders.
        x = dc_case(n=6, n_neg=10, dim=4, classes=3, seed=3, dtype=torch.float64)
        c1 = torch.tensor([0.1, 0.5, 0.3, 0.7, 0.2, 0.6], dtype=torch.float64)
        c2 = torch.tensor([0.9, 0.2, 0.95, 0.85, 0.4, 0.99], dtype=torch.float64)
        a2 = x["a2"].detach()

        def fn(a1):
            return directional_contrastive_loss(
                a1, a2, x["y1"], x["y2"], c1, c2, x["neg"], x["neg_labels"], temperature=0.5, chunk_size=3
            )

        return fn, (x["a1"].detach().clone().requires_grad_(),)

    def test_gradcheck_side_two(self):
        x = dc_case(n=6, n_neg=10, dim=4, classes=3, seed=4, dtype=torch.float64)
        c2 = torch.tensor([0.1, 0.5, 0.3, 0.7, 0.2, 0.6], dtype=torch.float64)
        c1 = torch.tensor([0.9, 0.2, 0.95, 0.85, 0.4, 0.99], dtype=torch.float64)
        a1 = x["a1"].detach()

        def fn(a2):
            return directional_contrastive_loss(
                a1, a2, x["y1"], x["y2"], c1, c2, x["neg"], x["neg_labels"], temperature=0.2, chunk_size=4
            )

        assert torch.autograd.gradcheck(fn, (x["a2"].detach().clone().requires_grad_(),), eps=1e-6, atol=1e-6)

    def bad_cases(self):
        x = dc_case(n=5, n_neg=7, dim=4)

        def with_(**change):
            return lambda: dcl({**x, **change})

        return [
            (with_(a2=torch.zeros(5, 3)), ValueError, r"a2 must have shape \(5, 4\).*\(5, 3\)"),
            (with_(a1=torch.zeros(5)), ValueError, r"a1 must have shape \(n, D\)"),
            (with_(y1=torch.zeros(4, dtype=torch.long)), ValueError, r"y1 must have shape \(5,\)"),
            (with_(c2=torch.zeros(6)), ValueError, r"c2 must have shape \(5,\)"),
            (with_(neg=torch.zeros(7, 3)), ValueError, r"neg must have shape \(N, D=4\).*\(7, 3\)"),
            (with_(neg_labels=torch.zeros(6, dtype=torch.long)), ValueError, r"neg_labels must have shape \(N,\) = \(7,\).*\(6,\)"),
            (with_(y2=torch.zeros(5)), TypeError, r"y2 must be an integer.*float32"),
            (with_(neg_labels=torch.zeros(7, dtype=torch.bool)), TypeError, r"neg_labels must be an integer"),
            (with_(c1=torch.zeros(5, dtype=torch.long)), TypeError, r"c1 must be a floating.*int64"),
            (with_(neg=torch.zeros(7, 4, dtype=torch.long)), TypeError, r"neg must be a floating"),
            (with_(a1=[[0.0] * 4] * 5), TypeError, r"a1 must be a torch.Tensor"),
            (lambda: dcl(x, temperature=0.0), ValueError, r"temperature must be > 0"),
            (lambda: dcl(x, chunk_size=0), ValueError, r"chunk_size must be a positive int"),
        ]  # fmt: skip

    @pytest.mark.parametrize(
        "kw",
        [
            {"n": 40, "n_neg": 200, "dim": 8, "classes": 5, "seed": 0},
            {"n": 64, "n_neg": 300, "dim": 16, "classes": 19, "seed": 1},
            {"n": 30, "n_neg": 50, "dim": 4, "classes": 2, "seed": 2},
        ],
    )
    @pytest.mark.parametrize("temperature", [0.1, 0.5])
    def test_matches_dense_reference(self, kw, temperature):
        x = dc_case(**kw)
        masks = direction_masks(x["c1"], x["c2"], gamma=0.75)
        assert 0 < int(masks["m1"].sum()) < kw["n"] and 0 < int(masks["m2"].sum()) < kw["n"]  # mixed masks
        loss, g1, g2 = loss_and_grads(directional_contrastive_loss, x, temperature=temperature, chunk_size=17)
        ref = as_float64(x)
        r_loss, r1, r2 = loss_and_grads(dense_dcloss, ref, temperature=temperature)
        assert loss.dtype == torch.float32
        assert float(loss) == pytest.approx(float(r_loss), rel=1e-5)
        torch.testing.assert_close(g1.double(), r1, rtol=1e-5, atol=1e-5 * float(r1.abs().max()))
        torch.testing.assert_close(g2.double(), r2, rtol=1e-5, atol=1e-5 * float(r2.abs().max()))

    def test_float64_inputs_compute_in_float64(self):
        x = dc_case(seed=5, dtype=torch.float64)
        loss, g1, _ = loss_and_grads(directional_contrastive_loss, x)
        r_loss, r1, _ = loss_and_grads(dense_dcloss, as_float64(x))
        assert loss.dtype == torch.float64
        assert float(loss) == pytest.approx(float(r_loss), rel=1e-12)
        torch.testing.assert_close(g1, r1, rtol=1e-10, atol=1e-12)

    def test_bf16_inputs_are_upcast(self):
        x = dc_case(seed=6)
        xb = {k: (v.detach().bfloat16() if v.is_floating_point() else v) for k, v in x.items()}
        xb["a1"].requires_grad_()
        xb["a2"].requires_grad_()
        loss, g1, _ = loss_and_grads(directional_contrastive_loss, xb)
        ref = as_float64(xb)
        assert loss.dtype == torch.float32 and g1.dtype == torch.bfloat16
        assert float(loss) == pytest.approx(float(loss_and_grads(dense_dcloss, ref)[0]), rel=1e-5)

    def test_small_temperature_uses_the_online_max_and_stays_exact(self):
        # 1/T = 200: e^{<a,b>/T} overflows fp32 without a running max.
        x = dc_case(seed=7, n=30, n_neg=120)
        loss, g1, g2 = loss_and_grads(directional_contrastive_loss, x, temperature=0.005, chunk_size=16)
        r_loss, r1, r2 = loss_and_grads(dense_dcloss, as_float64(x), temperature=0.005)
        assert torch.isfinite(loss) and float(loss) == pytest.approx(float(r_loss), rel=1e-5)
        torch.testing.assert_close(g1.double(), r1, rtol=1e-4, atol=1e-5 * float(r1.abs().max()))
        torch.testing.assert_close(g2.double(), r2, rtol=1e-4, atol=1e-5 * float(r2.abs().max()))

    def test_chunk_size_does_not_change_the_result(self):
        x = dc_case(seed=8, n=30, n_neg=45)
        base, b1, b2 = loss_and_grads(directional_contrastive_loss, x, chunk_size=None)
        for chunk in (1, 2, 7, 44, 45, 46, 1000):
            loss, g1, g2 = loss_and_grads(directional_contrastive_loss, x, chunk_size=chunk)
            assert float(loss) == pytest.approx(float(base), rel=1e-6), chunk
            torch.testing.assert_close(g1, b1, rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(g2, b2, rtol=1e-5, atol=1e-7)

    def test_gradients_reach_only_the_less_confident_masked_side(self):
        x = dc_case(seed=9)
        masks = direction_masks(x["c1"], x["c2"], gamma=0.75)
        _, g1, g2 = loss_and_grads(directional_contrastive_loss, x)
        for grad, mask in ((g1, masks["m1"]), (g2, masks["m2"])):
            assert torch.equal(grad[~mask], torch.zeros_like(grad[~mask]))
            assert bool((grad[mask].abs().sum(1) > 0).all())

    def test_same_label_negatives_have_no_effect(self):
        x = dc_case(seed=10, classes=4)
        x["y1"] = torch.zeros_like(x["y1"])
        x["y2"] = torch.zeros_like(x["y2"])
        loss, g1, g2 = loss_and_grads(directional_contrastive_loss, x)
        gen = torch.Generator().manual_seed(11)
        same = x["neg_labels"] == 0
        assert 0 < int(same.sum()) < len(same)
        moved = dict(x, neg=x["neg"].clone())
        moved["neg"][same] = unit(int(same.sum()), x["neg"].shape[1], gen=gen)
        loss2, h1, h2 = loss_and_grads(directional_contrastive_loss, moved)
        assert float(loss2) == pytest.approx(float(loss), rel=1e-6)
        torch.testing.assert_close(h1, g1, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(h2, g2, rtol=1e-5, atol=1e-7)
        other = dict(x, neg=x["neg"].clone())  # a negative of another label does count
        other["neg"][~same] = unit(int((~same).sum()), x["neg"].shape[1], gen=gen)
        assert float(loss_and_grads(directional_contrastive_loss, other)[0]) != pytest.approx(
            float(loss), rel=1e-3
        )

    def test_no_anchor_passing_gives_zero_and_zero_grads(self):
        x = dc_case(seed=12)
        x["c1"] = torch.full_like(x["c1"], 0.5)
        x["c2"] = torch.full_like(x["c2"], 0.5)
        loss, g1, g2 = loss_and_grads(directional_contrastive_loss, x)
        assert loss.item() == 0.0
        assert torch.equal(g1, torch.zeros_like(g1)) and torch.equal(g2, torch.zeros_like(g2))

    def test_one_side_only_is_not_nan(self):
        x = dc_case(seed=13)
        x["c1"] = torch.full_like(x["c1"], 0.1)  # side 2 never on
        loss, g1, g2 = loss_and_grads(directional_contrastive_loss, x)
        assert torch.isfinite(loss) and loss > 0 and torch.isfinite(g1).all()
        assert torch.equal(g2, torch.zeros_like(g2))

    def test_value_without_grad_is_the_same(self):
        x = dc_case(seed=15)
        with_grad = dcl(x, chunk_size=9)
        with torch.no_grad():
            without = dcl(x, chunk_size=9)
        assert not without.requires_grad and float(without) == pytest.approx(
            float(with_grad.detach()), rel=1e-6
        )

    def test_negatives_receive_no_gradient(self):
        x = dc_case(seed=14)
        neg = x["neg"].clone().requires_grad_()
        loss = dcl(dict(x, neg=neg))
        assert torch.autograd.grad(loss, [neg], allow_unused=True)[0] is None


# ---------------------------------------------------------------- anchors from crops


def crop_pair(*, flip1: bool, flip2: bool, seed: int = 0, dim: int = 6, classes: int = 4) -> dict:
    """Two 5x6-cell crops of one random 9x11-cell map with known offsets; boxes from the global overlap."""
    gen = torch.Generator().manual_seed(seed)
    feat = F.normalize(torch.randn(1, dim, 9, 11, generator=gen), dim=1)
    logits_a = torch.randn(1, classes, 9, 11, generator=gen) * 3  # each crop sees its own logits
    logits_b = torch.randn(1, classes, 9, 11, generator=gen) * 3
    h, w = 5, 6
    (r1, c1), (r2, c2) = (1, 2), (3, 4)  # crop origins, in cells
    oy0, oy1, ox0, ox1 = max(r1, r2), min(r1, r2) + h, max(c1, c2), min(c1, c2) + w
    out = {"overlap": (oy0, oy1, ox0, ox1), "feat": feat, "logits_a": logits_a, "logits_b": logits_b}
    for k, (r, c), flip, logits in ((1, (r1, c1), flip1, logits_a), (2, (r2, c2), flip2, logits_b)):
        proj = feat[:, :, r : r + h, c : c + w]
        lg = logits[:, :, r : r + h, c : c + w]
        out[f"proj{k}"] = proj.flip(-1) if flip else proj
        out[f"logits{k}"] = lg.flip(-1) if flip else lg
        out[f"box{k}"] = torch.tensor([[(oy0 - r) * 8, (ox0 - c) * 8, (oy1 - r) * 8, (ox1 - c) * 8]])
        out[f"flip{k}"] = torch.tensor([flip])
        out[f"origin{k}"] = (r, c)
    out["size"] = (h, w)
    return out


CROP_ARGS = ("proj1", "proj2", "logits1", "logits2", "box1", "box2", "flip1", "flip2")


class TestDcLossFromCrops:
    @pytest.mark.parametrize("flips", [(False, False), (True, False), (False, True), (True, True)])
    def test_anchors_line_up_after_undoing_flips(self, flips):
        p = crop_pair(flip1=flips[0], flip2=flips[1])
        x = overlap_anchors(*(p[k] for k in CROP_ARGS))
        oy0, oy1, ox0, ox1 = p["overlap"]
        expected = p["feat"][0, :, oy0:oy1, ox0:ox1].flatten(1).T
        assert x["a1"].shape == ((oy1 - oy0) * (ox1 - ox0), p["feat"].shape[1])
        assert torch.equal(x["a1"], x["a2"]) and torch.equal(x["a1"], expected)
        assert torch.equal(x["y1"], p["logits_a"][0, :, oy0:oy1, ox0:ox1].argmax(0).flatten())
        assert torch.equal(x["y2"], p["logits_b"][0, :, oy0:oy1, ox0:ox1].argmax(0).flatten())
        conf = p["logits_b"][0, :, oy0:oy1, ox0:ox1].softmax(0).amax(0).flatten()
        torch.testing.assert_close(x["c2"], conf)
        h, w = p["size"]
        assert x["neg"].shape == (2 * h * w, p["feat"].shape[1]) and not x["neg"].requires_grad

    def test_loss_equals_the_loss_on_globally_aligned_anchors(self):
        p = crop_pair(flip1=True, flip2=False, seed=1)
        p["proj1"] = p["proj1"].clone().requires_grad_()
        out = dc_loss_from_crops(*(p[k] for k in CROP_ARGS), temperature=0.2, gamma=0.5)
        oy0, oy1, ox0, ox1 = p["overlap"]
        ov = p["feat"][0, :, oy0:oy1, ox0:ox1].flatten(1).T
        probs = [p[k][0, :, oy0:oy1, ox0:ox1].softmax(0).flatten(1) for k in ("logits_a", "logits_b")]
        negs, neg_labels = [], []
        for k, lg in ((1, p["logits_a"]), (2, p["logits_b"])):
            (r, c), (h, w) = p[f"origin{k}"], p["size"]
            negs.append(p["feat"][0, :, r : r + h, c : c + w].flatten(1).T)
            neg_labels.append(lg[0, :, r : r + h, c : c + w].argmax(0).flatten())
        expected = directional_contrastive_loss(
            ov, ov, probs[0].argmax(0), probs[1].argmax(0), probs[0].amax(0), probs[1].amax(0),
            torch.cat(negs), torch.cat(neg_labels), temperature=0.2, gamma=0.5,
        )  # fmt: skip
        assert out["anchors"] == ov.shape[0]
        assert float(out["loss"].detach()) == pytest.approx(float(expected), rel=1e-5) and float(expected) > 0
        m = direction_masks(probs[0].amax(0), probs[1].amax(0), gamma=0.5)
        assert out["passing"] == pytest.approx((int(m["m1"].sum()) + int(m["m2"].sum())) / (2 * ov.shape[0]))
        out["loss"].backward()
        assert p["proj1"].grad is not None and p["proj1"].grad.abs().sum() > 0

    def test_valid_masks_drop_the_right_cells(self):
        p = crop_pair(flip1=False, flip2=True, seed=2)
        h, w = p["size"]
        gen = torch.Generator().manual_seed(3)
        cells = {k: torch.rand(h, w, generator=gen) > 0.3 for k in (1, 2)}  # in each crop's unflipped frame
        valid = {}
        for k in (1, 2):
            pix = cells[k].repeat_interleave(8, 0).repeat_interleave(8, 1)[None]
            pix[:, 1::8] = False  # only the centre pixel (8i+4, 8j+4) decides a cell
            valid[k] = pix.flip(-1) if bool(p[f"flip{k}"][0]) else pix
        x = overlap_anchors(*(p[k] for k in CROP_ARGS), valid1=valid[1], valid2=valid[2])
        oy0, oy1, ox0, ox1 = p["overlap"]
        keep = torch.ones(oy1 - oy0, ox1 - ox0, dtype=torch.bool)
        for k in (1, 2):
            r, c = p[f"origin{k}"]
            keep &= cells[k][oy0 - r : oy1 - r, ox0 - c : ox1 - c]
        expected = p["feat"][0, :, oy0:oy1, ox0:ox1].flatten(1).T[keep.flatten()]
        assert 0 < int(keep.sum()) < keep.numel()
        assert torch.equal(x["a1"], expected) and torch.equal(x["a2"], expected)
        assert x["neg"].shape[0] == int(cells[1].sum() + cells[2].sum())
        out = dc_loss_from_crops(*(p[k] for k in CROP_ARGS), valid1=valid[1], valid2=valid[2])
        assert out["anchors"] == int(keep.sum())

    def test_bad_boxes_and_shapes_raise_clear_errors(self):
        p = crop_pair(flip1=False, flip2=False)
        args = {k: p[k] for k in CROP_ARGS}

        def call(**change):
            return lambda: dc_loss_from_crops(**{**args, **change})

        box = p["box2"].clone()
        box[0, 3] -= 8
        cases = [
            (call(box2=box), r"sample 0 differ in size"),
            (call(box1=p["box1"] + 4), r"box1\[0\].*multiples of 8"),
            (call(box1=torch.tensor([[0, 0, 8, 64]])), r"box1\[0\].*0 <= x0 < x1 <= 48"),
            (call(box1=p["box1"].float()), r"box1 must be an int tensor of shape \(1, 4\)"),
            (call(logits2=p["logits2"][..., :-1]), r"logits2 must have shape \(1, C, 5, 6\)"),
            (call(proj1=p["proj1"][0]), r"proj1 must be a float tensor of shape \(B, D, h, w\)"),
            (call(flip2=torch.tensor([True, False])), r"flip2 must be a bool tensor of shape \(1,\)"),
            (lambda: dc_loss_from_crops(**args, valid1=torch.ones(1, 16, 16, dtype=torch.bool)), r"valid1"),
        ]
        for fn, match in cases:
            with pytest.raises(ValueError, match=match):
                fn()


# ---------------------------------------------------------------- mix loss


class TestMixLoss(LossContract):
    def hand_case(self):
        per_domain = {
            "cityscapes": {"ce": torch.tensor(1.5), "dc": torch.tensor(2.0)},
            "bdd100k": {"ce": torch.tensor(0.25)},
        }
        total, _ = mix_loss(per_domain, dc_weight=0.1)
        return total, 1.5 + 0.1 * 2.0 + 0.25

    def grad_case(self):
        return (
            lambda ce, dc: mix_loss({"a": {"ce": ce, "dc": dc}}, dc_weight=0.3)[0],
            (torch.tensor(1.0, dtype=torch.float64, requires_grad=True),)
            + (torch.tensor(2.0, dtype=torch.float64, requires_grad=True),),
        )

    def bad_cases(self):
        return [
            (lambda: mix_loss({}, dc_weight=0.1), ValueError, r"at least one domain"),
            (lambda: mix_loss({"a": {"dc": torch.tensor(1.0)}}, dc_weight=0.1), ValueError, r"'a'.*'ce'"),
            (lambda: mix_loss({"a": {"ce": torch.tensor(1.0), "cd": torch.tensor(1.0)}}, dc_weight=0.1), ValueError, r"cd"),
        ]  # fmt: skip

    def test_names_every_part(self):
        per_domain = {"x": {"ce": torch.tensor(1.0), "dc": torch.tensor(3.0)}, "y": {"ce": torch.tensor(2.0)}}
        total, parts = mix_loss(per_domain, dc_weight=0.5)
        assert parts == {"ce/x": 1.0, "dc/x": 3.0, "ce/y": 2.0, "loss": 4.5}
        assert all(isinstance(v, float) for v in parts.values()) and float(total) == 4.5

    def test_dc_weight_zero_gives_ce_only(self):
        ce = torch.tensor(1.25, requires_grad=True)
        dc = torch.tensor(7.0, requires_grad=True)
        total, parts = mix_loss({"x": {"ce": ce, "dc": dc}}, dc_weight=0.0)
        total.backward()
        assert float(total.detach()) == 1.25 and parts["dc/x"] == 7.0 and ce.grad == 1.0
        assert dc.grad is None or float(dc.grad) == 0.0


# ---------------------------------------------------------------- benchmark smoke


def test_bench_dcloss_smoke(capsys):
    spec = importlib.util.spec_from_file_location("bench_dcloss", ROOT / "benchmarks" / "bench_dcloss.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    flags = [
        "--n",
        "64",
        "--N",
        "512",
        "--small-n",
        "16",
        "--small-N",
        "128",
        "--repeats",
        "1",
        "--no-isolate",
    ]
    result = bench.main(flags)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("dcloss: time_vs_matmul=") and "peak_mib=" in last
    assert result["cityscapes"]["time_vs_matmul"] > 0 and "dense" in result["small"]
