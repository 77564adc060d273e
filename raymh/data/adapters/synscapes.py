"""Synscapes: Cityscapes label ids, no official split (a seeded, recorded one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raymh.data.adapters.base import AdapterError, Sample, images_in
from raymh.data.adapters.cityscapes import CityscapesAdapter
from raymh.data.ranking import rank_ids


class SynscapesAdapter(CityscapesAdapter):
    """`img/rgb/<n>.png` + `img/class/<n>.png`; val = the first round(val_fraction * n) ids in seeded hash order.

    The label encoding (classes, palette, label map) is Cityscapes', inherited.
    """

    kind = "synscapes"
    label_format = "cityscapes"
    layout = "img/rgb/<n>.png and img/class/<n>.png (split: seeded hash of the id)"
    image_suffix = ""

    def __init__(self, *, val_fraction: float = 0.2, seed: int = 0) -> None:
        if not 0 < val_fraction < 1:
            raise AdapterError(f"synscapes: val_fraction must be in (0, 1), got {val_fraction!r}")
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)

    def split_info(self, root: Path) -> dict[str, Any]:
        return {
            "rule": "sha256 rank of f'{seed}:{id}', first share is val",
            "seed": self.seed,
            "val_fraction": self.val_fraction,
        }

    def val_count(self, n: int) -> int:
        """Val samples out of n: round(val_fraction * n), at least 1 and at most n - 1 when n >= 2."""
        return 0 if n < 2 else min(n - 1, max(1, round(self.val_fraction * n)))

    def _list(self, root: Path, split: str) -> list[Sample]:
        labels = root / "img" / "class"
        every = {self.id_from_image(p): p for p in images_in(root / "img" / "rgb", (".png",))}
        ranked = rank_ids(every, seed=self.seed)
        k = self.val_count(len(ranked))
        chosen = ranked[:k] if split == "val" else ranked[k:]
        return [Sample(i, every[i], labels / every[i].name) for i in chosen]
