"""Figures of the evidence tables (matplotlib, Agg): bars with error bars, the qualitative comparison
(input | ground truth | treated | control on the same val images) and the diagnostics curves of the
semi-supervised runs."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from raymh.evidence.tables import TableValues

DIAGNOSTICS = {
    "pseudo_acc": "pseudo-label accuracy (unlabeled crops)",
    "pseudo_acc_confident": "pseudo-label accuracy where conf > gamma",
    "passing": "fraction of anchors passing the direction mask",
    "pos_sim": "mean positive similarity",
    "hard_neg_sim": "mean hardest-negative similarity",
    "dc": "DCLoss",
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(values: TableValues, path: Path) -> Path:
    """Per column (domains, average): one bar per table row, mean mIoU x100 with a +-std error bar."""
    plt = _plt()
    rows, cols = values.spec.rows, values.columns
    fig, ax = plt.subplots(figsize=(1.2 + 1.6 * len(cols), 3.6))
    width = 0.8 / len(rows)
    top = 0.0
    for k, row in enumerate(rows):
        s = [values.cells[(row, c)] for c in cols]
        means = [100 * x.mean if x.n else 0.0 for x in s]
        errs = [100 * x.std if x.n and math.isfinite(x.std) else 0.0 for x in s]
        xs = np.arange(len(cols)) + (k - (len(rows) - 1) / 2) * width
        ax.bar(xs, means, width, yerr=errs, capsize=2, label=f"{row.label} {row.fraction}")
        top = max([top, *(m + e for m, e in zip(means, errs, strict=True))])
    ax.set_xticks(np.arange(len(cols)), cols)
    ax.set_ylabel("val mIoU x100")
    seeds = f"{len(values.seeds)} seeds" if values.uniform_seeds else f"{len(values.seeds)} seeds, not in every cell"
    ax.set_title(f"{values.spec.name} ({seeds})", fontsize=10)
    legend_rows = math.ceil(len(rows) / 2)
    ax.set_ylim(0, max(top, 1.0) * (1.08 + 0.07 * legend_rows))  # headroom: the legend covers no bar
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _colorize(label: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    from raymh.train.artifacts import colorize

    return colorize(label, palette)


def qualitative(
    predictions: Mapping[str, Mapping[str, Path]], *, names: tuple[str, str], path: Path, per_domain: int = 2
) -> Path | None:
    """predictions: {domain: {"treated": dir, "control": dir}} of `save_predictions` folders (same val ids).
    Draws, per domain and val image: input | ground truth | treated | control."""
    from PIL import Image

    rows, titles = [], []
    for domain, dirs in predictions.items():
        palette = json.loads((dirs["treated"] / "palette.json").read_text())
        stems = sorted(p.name[: -len(".pred.png")] for p in dirs["treated"].glob("*.pred.png"))
        stems = [s for s in stems if (dirs["control"] / f"{s}.pred.png").is_file()][:per_domain]
        for stem in stems:
            image = np.asarray(Image.open(dirs["treated"] / f"{stem}.image.png").convert("RGB"))
            label = np.asarray(Image.open(dirs["treated"] / f"{stem}.label.png"))
            preds = [np.asarray(Image.open(dirs[k] / f"{stem}.pred.png")) for k in ("treated", "control")]
            rows.append([image, _colorize(label, palette), *(_colorize(p, palette) for p in preds)])
            titles.append(f"{domain}: {stem}")
    if not rows:
        return None
    plt = _plt()
    h, w = rows[0][0].shape[:2]
    fig, axes = plt.subplots(len(rows), 4, figsize=(4 * 2.2 * w / h, len(rows) * 2.3), squeeze=False)
    heads = ["input", "ground truth", *names]
    for i, (row, title) in enumerate(zip(rows, titles, strict=True)):
        for j, img in enumerate(row):
            ax = axes[i][j]
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(heads[j], fontsize=9)
            if j == 0:
                ax.set_ylabel(title, fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def diagnostics(curves: Mapping[str, Mapping[str, Mapping[str, Sequence[tuple[int, float]]]]], path: Path) -> Path | None:
    """curves: {series (e.g. 'semi@1/8'): {diagnostic: {domain: [(step, value averaged over seeds)]}}}."""
    names = [k for k in DIAGNOSTICS if any(points for c in curves.values() for points in c.get(k, {}).values())]
    if not names:  # runs without diagnostics (a store written by hand, or DCLoss that never started): no figure
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.1 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        for series, by_metric in curves.items():
            for domain, points in sorted(by_metric.get(name, {}).items()):
                if points:
                    steps, vals = zip(*points, strict=True)
                    ax.plot(steps, vals, label=f"{series} {domain}", lw=1)
        ax.set_title(DIAGNOSTICS[name], fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=6, ncol=3)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
