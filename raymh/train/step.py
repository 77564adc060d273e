"""One training step of the method: per-domain CE and DCLoss, the Mix Loss (docs/method.md).

L = sum_d ( CE_d + lambda_t * DC_d ); one forward of the shared body over every domain's images (or one per
domain), each head on its own slice, one backward by the caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from raymh.config import ExperimentConfig, LossConfig
from raymh.conventions import IGNORE_INDEX
from raymh.losses import cross_entropy, dc_loss_from_crops, mix_loss
from raymh.losses.diagnostics import pseudo_label_accuracy
from raymh.losses.world import LOCAL, World
from raymh.model import normalize_uint8
from raymh.model.dropout import sample_keys
from raymh.model.precision import at_least_fp32
from raymh.streams import sample_seed
from raymh.train.checkpoint import unwrap


@dataclass
class StepOutput:
    loss: torch.Tensor  # what this rank calls backward on: the Mix Loss (x W, its partial share on W ranks)
    parts: dict[str, float]  # "ce/<d>", "dc/<d>", "loss": every term of the whole batch (all ranks), for logging
    # "passing/<d>": fraction of DCLoss directional terms on; with diagnostics also "pseudo_acc/<d>",
    # "pseudo_acc_confident/<d>" (when the crops carry true labels), "pos_sim/<d>", "hard_neg_sim/<d>";
    # all over every rank's crops (under placement, rank 0 gets every domain's)
    stats: dict[str, float]


def dc_weight_at(step: int, cfg: LossConfig) -> float:
    """lambda_t: 0 before dc_start_iter, then a linear ramp over dc_rampup_iters to dc_weight."""
    if cfg.dc_weight == 0 or step < cfg.dc_start_iter:
        return 0.0
    if cfg.dc_rampup_iters:
        return cfg.dc_weight * min(1.0, (step - cfg.dc_start_iter + 1) / cfg.dc_rampup_iters)
    return cfg.dc_weight


def _inputs(batch: dict, use_dc: bool, device, channels_last: bool, dtype) -> tuple[torch.Tensor, int, int]:
    """One domain's step images: labeled crops, then (when DCLoss is on) crop 1s and crop 2s."""
    parts = [batch["labeled"]["image"]]
    if use_dc:
        parts += [batch["unlabeled"]["image1"], batch["unlabeled"]["image2"]]
    x = normalize_uint8(torch.cat(parts).to(device, non_blocking=True), dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, batch["labeled"]["image"].shape[0], (batch["unlabeled"]["image1"].shape[0] if use_dc else 0)


def mix_loss_step(
    model: torch.nn.Module,
    batches: dict[str, dict[str, dict[str, torch.Tensor]]],
    cfg: ExperimentConfig,
    *,
    step: int,
    dc_weight: float,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    diagnostics: bool = False,
    world: World = LOCAL,
    domain_worlds: Mapping[str, World] | None = None,
) -> StepOutput:
    """Forward every domain's labeled batch and crop pair, and return the Mix Loss with its parts.

    step: the step's number (it keys each sample's dropout masks); dc_weight: lambda_t of this step
    (`dc_weight_at(step, cfg.loss)`, computed once by the caller); at 0 no crop pair is forwarded.

    diagnostics: also measure the unsupervised branch (`raymh.losses.diagnostics`; costs a little, so the
    worker asks for it on logging steps only). Over all ranks' crops: every rank must pass the same flag
    (it adds collectives), and every rank gets the stats of the whole batch.
    world: the ranks holding the other slices of the step's batch. Every term is normalised over all of
    them (labeled pixels, masked anchors; negatives gathered when loss.gather_negatives), so W ranks with
    b images per domain compute the loss and, after DDP's average, the gradient of one worker with W*b.
    domain_worlds: {domain: the ranks holding that domain's slices} when they are not all of `world`
    (placement by domain: a rank holds one domain's batch, `batches` has only that domain). A domain's
    labeled pixels, masked anchors and negatives are then summed over its own ranks; the parts and the
    backward scale stay over `world`, where ranks without a domain add 0 to its terms."""
    lam = dc_weight  # lambda_t, computed once per step by the caller (`dc_weight_at`)
    use_dc = lam > 0
    dev = torch.device(device)
    inputs, sizes = {}, {}
    dtype = at_least_fp32(next(model.parameters())).dtype  # fp32 images, fp64 for an fp64 model
    for domain, batch in batches.items():
        inputs[domain], n_lab, n_unl = _inputs(batch, use_dc, dev, channels_last, dtype)
        sizes[domain] = (n_lab, n_unl)

    worlds = dict(domain_worlds) if domain_worlds is not None else {d: world for d in inputs}
    keys = _dropout_keys(cfg.train.seed, step, sizes, worlds)
    with torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_dtype is not None), sample_keys(model, keys):
        # joint: one trunk pass over all domains' images, each head on its own slice (one DDP forward either way)
        outputs = model(inputs, joint=cfg.train.forward == "joint")

    labels = {d: batches[d]["labeled"]["label"].to(dev, non_blocking=True) for d in outputs}
    # labeled pixels per domain over the domain's ranks, the CE's divisor (None: this rank's batch is all)
    pixels = _global_sums({d: (labels[d] != IGNORE_INDEX).sum().float() for d in outputs}, worlds)
    per_domain, sums = {}, {}  # sums: {domain: {name: this rank's share}}, the stats' numerators and counts
    for domain, out in outputs.items():
        n_lab, n_unl = sizes[domain]
        logits = at_least_fp32(out["logits"][:n_lab])
        ce = cross_entropy(logits, labels[domain], normalizer=pixels[domain])
        terms = {"ce": ce}
        if use_dc:
            u = batches[domain]["unlabeled"]
            logits8 = F.avg_pool2d(at_least_fp32(out["logits"][n_lab:]), 2)  # the classifier at stride 8
            proj = at_least_fp32(out["proj"][n_lab:])
            dc = dc_loss_from_crops(
                proj[:n_unl], proj[n_unl:], logits8[:n_unl], logits8[n_unl:],
                u["box1"].to(dev), u["box2"].to(dev), u["flip1"].to(dev), u["flip2"].to(dev),
                temperature=cfg.loss.temperature, gamma=cfg.loss.gamma, chunk_size=cfg.loss.chunk_size,
                valid1=u["valid1"].to(dev), valid2=u["valid2"].to(dev), diagnostics=diagnostics,
                world=worlds[domain], gather_negatives=cfg.loss.gather_negatives,
            )  # fmt: skip
            terms["dc"] = dc["loss"]
            sums[domain] = {"served": 1.0, "on": dc["on"], "terms": 2.0 * dc["anchors"]}
            if diagnostics:
                sums[domain].update(_diagnostic_sums(dc, u, logits8, n_unl, cfg.loss.gamma))
        per_domain[domain] = terms

    total, parts = mix_loss(per_domain, dc_weight=lam)
    names = _sum_names(use_dc, diagnostics)
    if world.size > 1:  # the ranks' partial terms sum to the batch's terms; the stats' sums too (one all-reduce)
        terms = ("ce", "dc") if use_dc else ("ce",)
        domains = unwrap(model).domains  # the same on every rank
        part_keys = [f"{t}/{d}" for d in domains for t in terms] + ["loss"]
        sum_keys = [(d, n) for d in domains for n in names]
        local = [parts.get(k, 0.0) for k in part_keys] + [sums.get(d, {}).get(n, 0.0) for d, n in sum_keys]
        summed = world.sum(torch.tensor(local, dtype=torch.float64, device=dev)).tolist()
        parts = dict(zip(part_keys, summed[: len(part_keys)], strict=True))
        sums = {d: {} for d in domains}
        for (d, n), v in zip(sum_keys, summed[len(part_keys) :], strict=True):
            sums[d][n] = v
        total = total * world.backward_scale
    parts["dc_weight"] = lam
    return StepOutput(loss=total, parts=parts, stats=_stats(sums))


_PASSING_SUMS = ("served", "on", "terms")
_DIAGNOSTIC_SUMS = ("pos", "pairs", "hard", "hard_anchors", "labelled", "right", "cells", "right_conf", "confident")


def _sum_names(use_dc: bool, diagnostics: bool) -> tuple[str, ...]:
    if not use_dc:
        return ()
    return _PASSING_SUMS + (_DIAGNOSTIC_SUMS if diagnostics else ())


def _stats(sums: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The logged stats of the domains some rank forwarded crops of, from sums over all ranks."""
    stats = {}
    for d, s in sums.items():
        if not s.get("served"):
            continue
        stats[f"passing/{d}"] = s["on"] / s["terms"] if s["terms"] else 0.0
        if "pos" not in s:
            continue
        stats[f"pos_sim/{d}"], stats[f"hard_neg_sim/{d}"] = _ratio(s, "pos", "pairs"), _ratio(s, "hard", "hard_anchors")
        if s["labelled"]:
            stats[f"pseudo_acc/{d}"] = _ratio(s, "right", "cells")
            stats[f"pseudo_acc_confident/{d}"] = _ratio(s, "right_conf", "confident")
    return stats


def _ratio(sums: Mapping[str, float], num: str, den: str) -> float:
    return sums[num] / sums[den] if sums[den] else float("nan")


def _dropout_keys(seed: int, step: int, sizes: Mapping[str, tuple[int, int]], worlds: Mapping[str, World]) -> list[int]:
    """One dropout key per image row the model is fed, in `_inputs`' order (each domain's labeled crops,
    crop 1s, crop 2s): the sample's place in its domain's global batch, not this rank's (raymh.model.dropout).
    Every rank of a domain holds as many images of each part (the global batch split evenly)."""
    keys = []
    for domain, (n_lab, n_unl) in sizes.items():
        rank = worlds[domain].rank
        for part, n in ((0, n_lab), (1, n_unl), (2, n_unl)):
            keys += [
                sample_seed(seed, "dropout", domain=domain, part=part, index=rank * n + i, step=step)
                for i in range(n)
            ]
    return keys


def _global_sums(counts: Mapping[str, torch.Tensor], worlds: Mapping[str, World]) -> dict[str, float | None]:
    """Each domain's count summed over its world (None for a world of one), one all-reduce per world."""
    out: dict[str, float | None] = {d: None for d in counts}
    by_world: dict[int, list[str]] = {}
    for d in counts:
        if worlds[d].size > 1:
            by_world.setdefault(id(worlds[d]), []).append(d)
    for names in by_world.values():
        summed = worlds[names[0]].sum(torch.stack([counts[d] for d in names])).tolist()
        out.update(zip(names, summed, strict=True))
    return out


def _diagnostic_sums(dc: dict, unlabeled: dict, logits8: torch.Tensor, n_unl: int, gamma: float) -> dict:
    """This rank's share of one domain's DCLoss diagnostics: the similarity sums, and the pseudo-label counts
    when the crops carry true labels (added over ranks by mix_loss_step, which logs their ratios)."""
    pos, pairs, hard, hard_anchors = dc["similarity_sums"].tolist()
    out = {"pos": pos, "pairs": pairs, "hard": hard, "hard_anchors": hard_anchors, "labelled": 0.0}
    if "label1" in unlabeled:
        labels = torch.cat([unlabeled["label1"], unlabeled["label2"]]).to(logits8.device)
        acc = pseudo_label_accuracy(logits8[: 2 * n_unl], labels, gamma=gamma)
        out.update(
            labelled=1.0, right=acc["right"], cells=acc["cells"], right_conf=acc["right_confident"],
            confident=acc["confident"],
        )  # fmt: skip
    return out
