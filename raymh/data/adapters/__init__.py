"""Dataset adapters: one class per dataset kind, looked up by name (docs/data.md).

Adding a dataset = one adapter module with its label map, one line in `ADAPTERS`, and a test fixture.
"""

from __future__ import annotations

import inspect
from typing import Any

from raymh.data.adapters.base import IMAGE_EXTENSIONS, Adapter, AdapterError, Sample
from raymh.data.adapters.bdd100k import BDD100KAdapter
from raymh.data.adapters.cityscapes import CityscapesAdapter
from raymh.data.adapters.folder import FolderAdapter, FolderClasses, generated_palette, read_classes
from raymh.data.adapters.synscapes import SynscapesAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    cls.kind: cls for cls in (CityscapesAdapter, BDD100KAdapter, SynscapesAdapter, FolderAdapter)
}


def get_adapter(kind: str, **options: Any) -> Adapter:
    """The adapter of one dataset kind, built with its keyword options (e.g. synscapes' val_fraction)."""
    if kind not in ADAPTERS:
        raise AdapterError(f"unknown dataset kind {kind!r}; known kinds: {', '.join(sorted(ADAPTERS))}")
    cls = ADAPTERS[kind]
    accepted = [p for p in inspect.signature(cls).parameters if p != "self"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise AdapterError(
            f"dataset kind {kind!r} takes no option(s) {unknown}; it accepts: {', '.join(accepted) or 'none'}"
        )
    return cls(**options)


__all__ = [
    "ADAPTERS",
    "IMAGE_EXTENSIONS",
    "Adapter",
    "AdapterError",
    "BDD100KAdapter",
    "CityscapesAdapter",
    "FolderAdapter",
    "FolderClasses",
    "Sample",
    "SynscapesAdapter",
    "generated_palette",
    "get_adapter",
    "read_classes",
]
