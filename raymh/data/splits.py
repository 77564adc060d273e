"""Label ratios: the stable labeled subset of a train split, and explicit split files (docs/data.md).

The rule: rank ids by sha256(f"{seed}:{id}") and keep the first max(1, round(fraction * n)) of them
(Python's round, half to even). It depends only on the set of ids and the seed: not on their order, nor on
how they are sharded across workers, and a smaller fraction gives a subset of a
larger one with the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

from raymh.data.adapters import ADAPTERS, get_adapter
from raymh.data.adapters.base import IMAGE_EXTENSIONS
from raymh.data.ranking import rank_ids, rank_key  # noqa: F401 - rank_key: part of the split rule's API
from raymh.errors import InputError

LABELED_FILE = "labeled.txt"
UNLABELED_FILE = "unlabeled.txt"


class SplitError(InputError):
    """A bad label fraction, id list or split file."""


def check_fraction(fraction: float) -> float:
    """The fraction itself when 0 < fraction <= 1, else a SplitError naming it."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or math.isnan(fraction):
        raise SplitError(f"labeled fraction must be a number in (0, 1], got {fraction!r}")
    if not 0 < fraction <= 1:
        raise SplitError(f"labeled fraction must be in (0, 1] (e.g. 0.125 for 1/8), got {fraction!r}")
    return float(fraction)


def labeled_count(n: int, *, fraction: float) -> int:
    """How many of n ids are labeled: max(1, round(fraction * n)) (so all of them at fraction 1)."""
    return min(n, max(1, round(check_fraction(fraction) * n)))


def _unique(ids: Sequence[str], where: str) -> list[str]:
    ids = list(ids)
    if not ids:
        raise SplitError(f"{where}: no ids to choose from")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        repeated = sorted({i for i in ids if i in seen or seen.add(i)})
        raise SplitError(f"{where}: ids must be unique; repeated: {repeated[:5]}")
    return ids


def labeled_ids(ids: Sequence[str], *, fraction: float, seed: int) -> list[str]:
    """The labeled subset of `ids` (sorted by id) under the seeded rank rule."""
    ids = _unique(ids, "labeled_ids")
    k = labeled_count(len(ids), fraction=fraction)
    return sorted(rank_ids(ids, seed=seed)[:k])


def _id_rule(kind: str | None):
    """The image-path -> id rule: the kind's adapter's, or the stem less any registered image suffix."""
    if kind is not None:
        return get_adapter(kind).id_from_image
    suffixes = sorted(
        {cls.image_suffix for cls in ADAPTERS.values() if cls.image_suffix}, key=len, reverse=True
    )

    def rule(path: str) -> str:
        stem = Path(path).stem
        for suffix in suffixes:
            if stem.endswith(suffix):
                return stem[: -len(suffix)]
        return stem

    return rule


def read_split_file(
    path: str | Path, *, kind: str | None = None, known_ids: Collection[str] | None = None
) -> list[str]:
    """Ids listed in a split file, in file order.

    One entry per line; `#` starts a comment; blank lines are skipped. An entry is either a bare id
    (`aachen_000000_000019`) or a UniMatch/CAC style line `path/to/image.png path/to/label.png`, whose id is
    taken from the image path as the adapter does: the file name without directories and extension, less
    the kind's image suffix (`_leftImg8bit` for cityscapes). Without `kind`, any registered adapter's image
    suffix is stripped. A single token ending in .png/.jpg/.jpeg is read as an image path too.
    With `known_ids`, ids not among them are an error listing a few.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SplitError(f"cannot read split file {path}: {e.strerror or e}") from e
    rule = _id_rule(kind)
    ids: list[str] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split("#", 1)[0].split()
        if not tokens:
            continue
        token = tokens[0]
        is_path = len(tokens) > 1 or Path(token).suffix.lower() in IMAGE_EXTENSIONS
        sample_id = rule(token) if is_path else token
        if sample_id in first_line:
            raise SplitError(
                f"{path}:{lineno}: id {sample_id!r} is listed twice (first on line {first_line[sample_id]})"
            )
        first_line[sample_id] = lineno
        ids.append(sample_id)
    if not ids:
        raise SplitError(f"split file {path} lists no ids (one id or 'image label' pair per line)")
    if known_ids is not None:
        known = set(known_ids)
        missing = [i for i in ids if i not in known]
        if missing:
            raise SplitError(
                f"{path}: {len(missing)} of {len(ids)} ids are not in the data, e.g. {missing[:5]}; "
                "is the file for this dataset and split?"
            )
    return ids


def write_split_lists(
    directory: str | Path, labeled: Iterable[str], unlabeled: Iterable[str]
) -> dict[str, Path]:
    """Write `labeled.txt` and `unlabeled.txt` (one id per line) into `directory`; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"labeled": directory / LABELED_FILE, "unlabeled": directory / UNLABELED_FILE}
    for name, ids in (("labeled", labeled), ("unlabeled", unlabeled)):
        paths[name].write_text("".join(f"{i}\n" for i in ids))
    return paths


def choose_labeled(
    train_ids: Sequence[str],
    *,
    fraction: float = 1.0,
    seed: int = 0,
    split_file: str | Path | None = None,
    kind: str | None = None,
) -> dict[str, list[str]]:
    """Split train ids into {"labeled", "unlabeled"}: from `split_file` when given, else the seeded rule."""
    if split_file is not None:
        chosen = set(read_split_file(split_file, kind=kind, known_ids=train_ids))
    else:
        chosen = set(labeled_ids(train_ids, fraction=fraction, seed=seed))
    return {
        "labeled": sorted(i for i in train_ids if i in chosen),
        "unlabeled": sorted(i for i in train_ids if i not in chosen),
    }
