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
from raymh.model.precision import at_least_fp32
from raymh.train.checkpoint import unwrap


@dataclass
class StepOutput:
    loss: torch.Tensor  # what this rank calls backward on: the Mix Loss (x W, its partial share on W ranks)
    parts: dict[str, float]  # "ce/<d>", "dc/<d>", "loss": every term of the whole batch (all ranks), for logging
    # "passing/<d>": fraction of DCLoss directional terms on; with diagnostics also "pseudo_acc/<d>",
    # "pseudo_acc_confident/<d>" (when the crops carry true labels), "pos_sim/<d>", "hard_neg_sim/<d>"
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
    dc_weight: float,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    diagnostics: bool = False,
    world: World = LOCAL,
    domain_worlds: Mapping[str, World] | None = None,
) -> StepOutput:
    """Forward every domain's labeled batch and crop pair, and return the Mix Loss with its parts.

    dc_weight: lambda_t of this step (`dc_weight_at(step, cfg.loss)`); at 0 no crop pair is forwarded.

    diagnostics: also measure the unsupervised branch (`raymh.losses.diagnostics`; costs a little, so the
    worker asks for it on logging steps only; measured on this rank's slice).
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

    with torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        # joint: one trunk pass over all domains' images, each head on its own slice (one DDP forward either way)
        outputs = model(inputs, joint=cfg.train.forward == "joint")

    labels = {d: batches[d]["labeled"]["label"].to(dev, non_blocking=True) for d in outputs}
    worlds = dict(domain_worlds) if domain_worlds is not None else {d: world for d in outputs}
    # labeled pixels per domain over the domain's ranks, the CE's divisor (None: this rank's batch is all)
    pixels = _global_sums({d: (labels[d] != IGNORE_INDEX).sum().float() for d in outputs}, worlds)
    per_domain, stats = {}, {}
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
            stats[f"passing/{domain}"] = dc["passing"]
            if diagnostics:
                stats.update(_diagnostics(domain, dc, u, logits8, n_unl, cfg.loss.gamma))
        per_domain[domain] = terms

    total, parts = mix_loss(per_domain, dc_weight=lam)
    if world.size > 1:  # the ranks' partial terms sum to the batch's terms
        terms = ("ce", "dc") if use_dc else ("ce",)
        keys = [f"{t}/{d}" for d in unwrap(model).domains for t in terms] + ["loss"]  # the same on every rank
        local = torch.tensor([parts.get(k, 0.0) for k in keys], dtype=torch.float64, device=dev)
        parts = dict(zip(keys, world.sum(local).tolist(), strict=True))
        total = total * world.backward_scale
    parts["dc_weight"] = lam
    return StepOutput(loss=total, parts=parts, stats=stats)


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


def _diagnostics(domain: str, dc: dict, unlabeled: dict, logits8: torch.Tensor, n_unl: int, gamma: float) -> dict:
    """One domain's DCLoss diagnostics: similarities, and pseudo-label accuracy when the crops carry labels."""
    out = {f"{k}/{domain}": dc[k] for k in ("pos_sim", "hard_neg_sim")}
    if "label1" in unlabeled:
        labels = torch.cat([unlabeled["label1"], unlabeled["label2"]]).to(logits8.device)
        acc = pseudo_label_accuracy(logits8[: 2 * n_unl], labels, gamma=gamma)
        out[f"pseudo_acc/{domain}"] = acc["acc"]
        out[f"pseudo_acc_confident/{domain}"] = acc["acc_confident"]
    return out
