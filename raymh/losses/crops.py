"""Anchors and negatives of the DCLoss built from two overlapping crops (docs/method.md, DCLoss items 1-4)."""

from __future__ import annotations

import torch
from torch import Tensor

from raymh.conventions import FEATURE_STRIDE
from raymh.losses.dcloss import direction_masks, directional_contrastive_loss
from raymh.losses.world import LOCAL, World
from raymh.model.precision import at_least_fp32

__all__ = ["dc_loss_from_crops", "overlap_anchors"]

STRIDE = FEATURE_STRIDE
DIAGNOSTIC_ANCHORS = 512  # the hardest negative of at most this many anchors per domain and step (all ranks')


def dc_loss_from_crops(
    proj1: Tensor,
    proj2: Tensor,
    logits1: Tensor,
    logits2: Tensor,
    box1: Tensor,
    box2: Tensor,
    flip1: Tensor,
    flip2: Tensor,
    *,
    temperature: float = 0.1,
    gamma: float = 0.75,
    chunk_size: int | None = None,
    valid1: Tensor | None = None,
    valid2: Tensor | None = None,
    diagnostics: bool = False,
    world: World = LOCAL,
    gather_negatives: bool = True,
    max_anchors: int | None = None,
) -> dict:
    """DCLoss of a crop pair: undo flips, align the overlap boxes, negatives = all positions (docs/method.md, DCLoss items 2-5).

    world: the ranks holding the other slices of the batch. The loss is then this rank's partial loss (its
    masked anchors over the masked-anchor counts of all ranks), and with gather_negatives the negatives are
    every rank's; the ranks' losses sum to the loss of the whole batch on one worker.

    proj*: (B, D, h, w) stride-8 L2-normalised projections; logits*: (B, C, h, w) stride-8 logits; box*: (B, 4)
    [y0, x0, y1, x1] overlap in pixels (multiples of 8) in each crop's unflipped frame; flip*: (B,) bool;
    valid*: optional (B, H, W) bool pixel masks in the frame the crop was fed to the network (False = padding).
    Returns {"loss": Tensor, "anchors": int n (this rank's), "on": int (this rank's directional terms that
    are on), "passing": fraction of the directional terms that are on (all ranks')}; with diagnostics, also
    "pos_sim" and "hard_neg_sim" over all ranks' anchors (`raymh.losses.diagnostics.similarity_stats`, the
    hardest negatives among the loss's negatives, at most max_anchors anchors of all ranks, default
    DIAGNOSTIC_ANCHORS) and
    "similarity_sums", this rank's share of them (`similarity_sums`).
    """
    x = overlap_anchors(
        proj1, proj2, logits1, logits2, box1, box2, flip1, flip2, valid1=valid1, valid2=valid2
    )
    masks = direction_masks(x["c1"].detach(), x["c2"].detach(), gamma=gamma)
    n = int(x["a1"].shape[0])
    counts = torch.stack([masks["m1"].sum(), masks["m2"].sum()]).float()
    totals = counts.new_tensor([float(counts.sum()), 2.0 * n])  # terms on, all terms
    normalizers = None
    neg, neg_labels = x["neg"], x["neg_labels"]
    if world.size > 1:
        summed = world.sum(torch.cat([counts, totals])).tolist()
        normalizers, totals = tuple(summed[:2]), torch.tensor(summed[2:])
        if gather_negatives:  # labels ride along as one more float column (exact below 2^24)
            rows = world.gather_rows(torch.cat([neg, neg_labels[:, None].to(neg.dtype)], 1))
            neg, neg_labels = rows[:, :-1], rows[:, -1].long()
    loss = directional_contrastive_loss(
        x["a1"], x["a2"], x["y1"], x["y2"], x["c1"], x["c2"], neg, neg_labels,
        temperature=temperature, gamma=gamma, chunk_size=chunk_size, normalizers=normalizers,
    )  # fmt: skip
    on, terms = (float(v) for v in totals)
    out = {"loss": loss, "anchors": n, "on": int(counts.sum()), "passing": on / terms if terms else 0.0}
    if diagnostics:
        from raymh.losses.diagnostics import anchor_pick, similarity_means, similarity_sums

        exclude = torch.stack([x["i1"], x["i2"]], 1)  # each anchor's own cell and its partner's
        offset, total = 0, n
        if world.size > 1:  # where this rank's anchors and negatives start among all ranks'
            starts, sizes = world.offsets(torch.tensor([n, x["neg"].shape[0]], device=exclude.device))
            offset, total = int(starts[0]), int(sizes[0])
            if gather_negatives:
                exclude = exclude + starts[1]
        limit = DIAGNOSTIC_ANCHORS if max_anchors is None else max_anchors
        pick = anchor_pick(total, limit, offset=offset, count=n, device=exclude.device)
        sums = similarity_sums(x["a1"], x["a2"], x["y1"], neg, neg_labels, pick=pick, exclude=exclude)
        out["similarity_sums"] = sums  # this rank's share; the means below are over the world
        out.update(similarity_means(world.sum(sums)))
    return out


def overlap_anchors(
    proj1: Tensor,
    proj2: Tensor,
    logits1: Tensor,
    logits2: Tensor,
    box1: Tensor,
    box2: Tensor,
    flip1: Tensor,
    flip2: Tensor,
    *,
    valid1: Tensor | None = None,
    valid2: Tensor | None = None,
) -> dict[str, Tensor]:
    """Aligned anchors of the overlap and all negatives of a crop pair (docs/method.md, DCLoss items 2-4).

    Same arguments as dc_loss_from_crops. Returns a1, a2 (n, D) (gradients flow), y1, y2 (n,) pseudo-labels,
    c1, c2 (n,) confidences, neg (N, D) detached and neg_labels (N,): anchors valid on both sides, negatives
    every valid cell of both crops of the batch (crop 1's cells, then crop 2's, each in (sample, row,
    column) order); i1, i2 (n,): the rows of neg that are the anchors a1_i and a2_i themselves.
    """
    _check_pair(proj1=proj1, logits1=logits1, box1=box1, flip1=flip1, valid1=valid1, k=1)
    _check_pair(proj1=proj2, logits1=logits2, box1=box2, flip1=flip2, valid1=valid2, k=2)
    if proj1.shape[:2] != proj2.shape[:2] or logits1.shape[:2] != logits2.shape[:2]:
        raise ValueError(
            f"crop 1 and crop 2 must share batch size and channels: proj1 {tuple(proj1.shape)} vs proj2 "
            f"{tuple(proj2.shape)}, logits1 {tuple(logits1.shape)} vs logits2 {tuple(logits2.shape)}"
        )
    views = [
        _unflipped_view(proj, logits, flip, valid)
        for proj, logits, flip, valid in ((proj1, logits1, flip1, valid1), (proj2, logits2, flip2, valid2))
    ]
    start = 0
    for view in views:  # each cell's row in `_negatives`' output: crop 1's valid cells, then crop 2's
        valid = view["valid"]
        view["pos"] = (valid.flatten().long().cumsum(0) - 1 + start).reshape(valid.shape)
        start += int(valid.sum())
    cuts: dict[str, list[Tensor]] = {k: [] for k in ("a1", "a2", "y1", "y2", "c1", "c2", "i1", "i2", "keep")}
    for b in range(proj1.shape[0]):
        cut1 = _cut_box(views[0], box1[b], b=b, k=1)
        cut2 = _cut_box(views[1], box2[b], b=b, k=2)
        if cut1["proj"].shape != cut2["proj"].shape:
            raise ValueError(
                f"overlap boxes of sample {b} differ in size: box1={box1[b].tolist()} gives "
                f"{tuple(cut1['proj'].shape[1:])} cells, box2={box2[b].tolist()} gives "
                f"{tuple(cut2['proj'].shape[1:])}; both must cover the same image region"
            )
        for k, cut in (("1", cut1), ("2", cut2)):
            cuts["a" + k].append(cut["proj"].flatten(1).T)
            cuts["y" + k].append(cut["y"].flatten())
            cuts["c" + k].append(cut["c"].flatten())
            cuts["i" + k].append(cut["pos"].flatten())
        cuts["keep"].append((cut1["valid"] & cut2["valid"]).flatten())
    keep = torch.cat(cuts.pop("keep"))
    out = {k: torch.cat(v)[keep] for k, v in cuts.items()}
    out["neg"], out["neg_labels"] = _negatives(views)
    return out


def _unflipped_view(proj: Tensor, logits: Tensor, flip: Tensor, valid: Tensor | None) -> dict[str, Tensor]:
    """Undo horizontal flips (torch.flip on the last dim where flagged); pseudo-labels and confidences."""
    flip = flip.to(device=proj.device, dtype=torch.bool)
    proj = torch.where(flip[:, None, None, None], proj.flip(-1), proj)
    probs = at_least_fp32(torch.where(flip[:, None, None, None], logits.flip(-1), logits).detach()).softmax(1)
    conf, label = probs.max(1)
    h, w = proj.shape[-2:]
    if valid is None:
        cells = torch.ones(proj.shape[0], h, w, dtype=torch.bool, device=proj.device)
    else:
        cells = valid[:, STRIDE // 2 :: STRIDE, STRIDE // 2 :: STRIDE].to(
            device=proj.device, dtype=torch.bool
        )
        cells = torch.where(flip[:, None, None], cells.flip(-1), cells)
    return {"proj": proj, "y": label, "c": conf, "valid": cells}


def _cut_box(view: dict[str, Tensor], box: Tensor, *, b: int, k: int) -> dict[str, Tensor]:
    """The stride-8 cells of one sample's overlap box [y0, x0, y1, x1] (pixels, unflipped frame)."""
    y0, x0, y1, x1 = (int(v) for v in box.tolist())
    h, w = view["proj"].shape[-2:]
    if any(v % STRIDE for v in (y0, x0, y1, x1)):
        raise ValueError(
            f"box{k}[{b}]={[y0, x0, y1, x1]} must be multiples of {STRIDE} pixels (stride-8 cells)"
        )
    if not (0 <= y0 < y1 <= h * STRIDE and 0 <= x0 < x1 <= w * STRIDE):
        raise ValueError(
            f"box{k}[{b}]={[y0, x0, y1, x1]} must satisfy 0 <= y0 < y1 <= {h * STRIDE} and "
            f"0 <= x0 < x1 <= {w * STRIDE} (crop {k} is {h}x{w} cells at stride {STRIDE})"
        )
    rows, cols = slice(y0 // STRIDE, y1 // STRIDE), slice(x0 // STRIDE, x1 // STRIDE)
    return {
        "proj": view["proj"][b, :, rows, cols],
        "y": view["y"][b, rows, cols],
        "c": view["c"][b, rows, cols],
        "valid": view["valid"][b, rows, cols],
        "pos": view["pos"][b, rows, cols],
    }


def _negatives(views: list[dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
    """Every valid position of both crops of the whole batch, detached, with its pseudo-label."""
    feats, labels = [], []
    for view in views:
        keep = view["valid"].flatten()
        feats.append(view["proj"].detach().permute(0, 2, 3, 1).reshape(-1, view["proj"].shape[1])[keep])
        labels.append(view["y"].flatten()[keep])
    return torch.cat(feats), torch.cat(labels)


def _check_pair(*, proj1, logits1, box1, flip1, valid1, k: int) -> None:
    """Validate one crop's tensors; messages name the argument (proj{k}, ...) and the expected shape."""
    if not isinstance(proj1, Tensor) or proj1.dim() != 4 or not proj1.is_floating_point():
        raise ValueError(f"proj{k} must be a float tensor of shape (B, D, h, w), got {_describe(proj1)}")
    bsz, _, h, w = proj1.shape
    if not isinstance(logits1, Tensor) or logits1.dim() != 4 or not logits1.is_floating_point():
        raise ValueError(f"logits{k} must be a float tensor of shape (B, C, h, w), got {_describe(logits1)}")
    if logits1.shape[0] != bsz or logits1.shape[-2:] != proj1.shape[-2:]:
        raise ValueError(
            f"logits{k} must have shape ({bsz}, C, {h}, {w}) to match proj{k} {tuple(proj1.shape)}, "
            f"got {tuple(logits1.shape)}"
        )
    if not isinstance(box1, Tensor) or tuple(box1.shape) != (bsz, 4) or box1.is_floating_point():
        raise ValueError(
            f"box{k} must be an int tensor of shape ({bsz}, 4) [y0, x0, y1, x1], got {_describe(box1)}"
        )
    if not isinstance(flip1, Tensor) or tuple(flip1.shape) != (bsz,) or flip1.is_floating_point():
        raise ValueError(f"flip{k} must be a bool tensor of shape ({bsz},), got {_describe(flip1)}")
    if valid1 is not None:
        ok = isinstance(valid1, Tensor) and valid1.dim() == 3 and valid1.shape[0] == bsz
        if ok:
            cells = valid1[:, STRIDE // 2 :: STRIDE, STRIDE // 2 :: STRIDE].shape[-2:]
            ok = tuple(cells) == (h, w)
        if not ok:
            raise ValueError(
                f"valid{k} must be a bool pixel mask of shape ({bsz}, H, W) with H, W in "
                f"[{STRIDE * h - STRIDE // 2 + 1}, {STRIDE * h + STRIDE // 2}] x "
                f"[{STRIDE * w - STRIDE // 2 + 1}, {STRIDE * w + STRIDE // 2}] (about {STRIDE * h}x{STRIDE * w}), "
                f"got {_describe(valid1)}"
            )


def _describe(x) -> str:
    """Shape and dtype of a tensor, or the type of anything else, for error messages."""
    return f"shape {tuple(x.shape)} dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
