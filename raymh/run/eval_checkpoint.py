"""`raymh eval`: score a checkpoint on every domain's val split, each domain where its data lives.

Each domain is scored by `score_domain`: its val files are found (a scan of its prepared dir), streamed and
decoded one batch at a time, and only its confusion matrix comes back (no train set is built). Under
`scaling.placement: by_domain` that runs as a Ray task on the domain's own nodes (its label selector), so
no image, label or prediction of the domain leaves its site; without placement, in this process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def score_domain(checkpoint: str, cfg_json: str, domain: str, prepared: str, heads: dict[str, int]) -> dict[str, Any]:
    """One domain's confusion matrix (numpy) and class names from the checkpoint in `checkpoint` (heads:
    {domain: class count} of its model), scored as the training loop scores (mode, window, precision)."""
    import torch

    from raymh.config import config_from_dict
    from raymh.data.site_reads import scan
    from raymh.data.val_rows import ValRows
    from raymh.data.worker_batches import val_batches
    from raymh.model import normalize_uint8
    from raymh.train.checkpoint import model_from_checkpoint, read_state
    from raymh.train.evaluate import evaluate_domains
    from raymh.train.worker import precision_settings

    cfg = config_from_dict(json.loads(cfg_json))
    state = read_state(checkpoint)
    model = model_from_checkpoint(checkpoint, cfg.model, heads, state=state)
    found = scan(prepared)
    if int(found["manifest"]["num_classes"]) != heads[domain]:
        raise ValueError(
            f"domain {domain!r}: {prepared} has {found['manifest']['num_classes']} classes, the checkpoint's head "
            f"{heads[domain]}; evaluate with the data the run trained on"
        )
    torch.set_num_threads(cfg.scaling.cpus_per_worker)
    autocast_dtype, channels_last = precision_settings(cfg, torch.device("cpu"))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    rows = ValRows.from_files(domain, found["val_files"])
    cms = evaluate_domains(
        model, {domain: val_batches(rows, rank=0, world_size=1, size=cfg.data.val_size)}, {domain: heads[domain]},
        normalize=normalize_uint8, mode=cfg.train.eval_mode, window=cfg.train.eval_crop or cfg.data.crop_size,
        autocast_dtype=autocast_dtype, channels_last=channels_last,
    )  # fmt: skip
    return {"confusion": cms[domain].mat.numpy(), "classes": list(found["manifest"]["classes"])}


def _heads(state: dict[str, Any], cfg, placed: bool) -> dict[str, int]:
    """{domain: class count} of the checkpoint's heads: from its inference record; a checkpoint without one
    (older raymh) from each prepared domain's manifest, which placement does not let this process read."""
    from raymh.errors import InputError

    if state.get("inference"):
        return {name: len(d["classes"]) for name, d in state["inference"]["domains"].items()}
    if placed:
        raise InputError("this checkpoint has no inference record (raymh < 0.1); evaluate it without placement")
    from raymh.data.cache import prepared_dirs
    from raymh.data.site_reads import read_manifest

    return {n: int(read_manifest(Path(p))["num_classes"]) for n, p in prepared_dirs(cfg).items()}


def evaluate_checkpoint(
    checkpoint: str, *, config: str | None = None, overrides: list[str] | None = None, address: str | None = None
) -> dict[str, float]:
    """`raymh eval`: load a checkpoint (or a run's best one) and evaluate every domain's val split."""
    import ray
    import torch

    from raymh.config import load_config
    from raymh.data.cache import prepared_dirs
    from raymh.data.site_reads import site_get
    from raymh.platform.cluster import init_ray
    from raymh.run.driver import check_placement
    from raymh.train.checkpoint import CONFIG_FILE, find_checkpoint, read_state
    from raymh.train.evaluate import ConfusionMatrix, miou_metrics

    ckpt = find_checkpoint(checkpoint)
    state = read_state(ckpt)  # first: a refused (unsafe) file stops before Ray starts
    cfg = load_config(config or str(ckpt / CONFIG_FILE), overrides or [])
    placed = cfg.scaling.placement == "by_domain"
    where = "each on its own site" if placed else "here"
    print(f"[raymh] evaluating {ckpt} on {[d.name for d in cfg.domains]} ({cfg.train.eval_mode}), {where}", flush=True)
    init_ray(cfg, address, train=False)
    cfg_json = json.dumps(cfg.model_dump(mode="json"))
    heads = _heads(state, cfg, placed)
    if placed:
        check_placement(cfg)
        score = ray.remote(score_domain)
        refs = {
            d.name: score.options(
                label_selector=dict(d.placement), num_cpus=cfg.scaling.cpus_per_worker, name=f"raymh-eval:{d.name}"
            ).remote(str(ckpt), cfg_json, d.name, str(Path(d.prepared).expanduser()), heads)
            for d in cfg.domains
        }  # fmt: skip
        scored = {d.name: site_get(refs[d.name], d.placement, domain=d.name) for d in cfg.domains}
    else:
        prepared = prepared_dirs(cfg)
        scored = {d.name: score_domain(str(ckpt), cfg_json, d.name, str(prepared[d.name]), heads) for d in cfg.domains}
    cms = {}
    for name, s in scored.items():
        cms[name] = ConfusionMatrix(len(s["classes"]))
        cms[name].mat = torch.from_numpy(np.asarray(s["confusion"], dtype=np.int64))
    metrics = miou_metrics(cms, {name: s["classes"] for name, s in scored.items()})
    for n in scored:
        print(f"  {n:<14}{metrics[f'val/miou/{n}']:.4f}")
    print(f"  {'mean':<14}{metrics['val/miou_mean']:.4f}", flush=True)
    return metrics
