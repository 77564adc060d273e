"""A domain's val split as its prepared Parquet files, read in the process that evaluates.

`ValRows` is what the driver hands a train worker (in the train loop's config) and what `raymh eval` reads
itself: the paths of the val split's Parquet files and its row count. The reader streams the files with
pyarrow, `read_rows` encoded rows at a time, keeps the rows whose id hashes to its rank
(`raymh.data.sets.shard_of`) and hands only those on to be decoded. Nothing goes through Ray: no task, no
object-store copy. Evaluation therefore needs no free CPU in the cluster (a full Tune grid cannot starve
it), costs nothing before the first training step, and holds at most `read_rows` encoded rows plus one
decoded batch per rank whatever the val set's size.

The files must be readable where the workers run: on one machine they are; on a cluster `data.cache_dir`
is a path every node sees (as for the Ray Data reads of `data.transforms_on: ray_data`), or, with
placement per domain, a path every node of that domain's site sees.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from raymh.data.sets import shard_of

COLUMNS = ("id", "image", "label")


@dataclass(frozen=True)
class ValRows:
    """One domain's val split: its Parquet files (absolute paths) and their row count."""

    name: str
    files: tuple[str, ...]
    num_rows: int

    @classmethod
    def from_files(cls, name: str, files: Sequence[str | Path]) -> ValRows:
        paths = tuple(str(Path(f).resolve()) for f in files)
        return cls(name, paths, sum(pq.ParquetFile(p).metadata.num_rows for p in paths))

    def iter_encoded(self, *, rank: int, world_size: int, read_rows: int = 16) -> Iterator[dict[str, list]]:
        """This rank's encoded rows, as {"id": [...], "image": [bytes], "label": [bytes | None]} batches of at
        most `read_rows` rows, in file order. The ranks' rows are disjoint and cover the split."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        for path in self.files:
            try:
                source = pq.ParquetFile(path)
            except OSError as err:
                raise FileNotFoundError(
                    f"{self.name}: cannot read val file {path} ({err}); the prepared data must be readable "
                    "where evaluation runs (data.cache_dir on a path every node sees)"
                ) from err
            for batch in source.iter_batches(batch_size=max(read_rows, 1), columns=list(COLUMNS)):
                ids = batch.column("id").to_pylist()
                mine = [i for i, sid in enumerate(ids) if shard_of(str(sid), world_size=world_size) == rank]
                if mine:
                    columns = {k: batch.column(k).to_pylist() for k in ("image", "label")}
                    yield {"id": [ids[i] for i in mine], **{k: [v[i] for i in mine] for k, v in columns.items()}}
