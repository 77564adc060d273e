"""A placed domain's encoded train rows, owned and kept on its site by an actor there (docs/placement.md).

Ray hands a task's results under 100 KiB back inline to whoever submitted the task: rows read by a site
task that the driver submits end up in the driver process, wherever the task ran. So under placement by
domain the rows are read by a `SiteStore` actor started on the domain's nodes (its label selector): it reads
the Parquet files there, `ray.put`s each table itself (the actor owns the objects, which live on its node),
and keeps them. The driver gets row counts only, and a `SiteRows` handle that names the actor and holds no
object reference; a train worker of that domain (placed on the same site) asks the actor for the references
(`SiteRows.resolve`) when it starts reading. Ranks of other domains never resolve it, so they hold no
reference to the domain's rows either.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from raymh.data.row_blocks import RowBlocks

STORE_PREFIX = "raymh-site-store"


class SiteStore:
    """The actor: reads a domain's sets on its node and owns their tables."""

    def __init__(self, domain: str) -> None:
        self.domain = domain
        self._sets: dict[str, RowBlocks] = {}

    def read(self, name: str, files: Sequence[str], ids: list[str], columns: list[str], *, repeat: int, shuffle: bool) -> list[int]:
        """Read the rows of `ids` of set `name`, one table per file, keep them; the tables' row counts."""
        import ray

        from raymh.data.site_reads import read_tables

        tables = [t for t in read_tables(files, ids, columns) if t.num_rows]
        if not tables:
            raise ValueError(f"{name}: no rows to put")
        self._sets[name] = RowBlocks(name, [ray.put(t) for t in tables], [t.num_rows for t in tables], repeat=repeat,
                                     shuffle=shuffle)  # fmt: skip
        return [t.num_rows for t in tables]

    def row_blocks(self, name: str) -> RowBlocks:
        """The set's RowBlocks (references to tables this actor owns), for a worker of the domain."""
        if name not in self._sets:
            raise KeyError(f"site store of {self.domain!r} holds no set {name!r}; it has {sorted(self._sets)}")
        return self._sets[name]


@dataclass(frozen=True)
class SiteRows:
    """What the driver holds of a placed set: its store (actor handle and name) and the row counts; no
    reference to any row. The handle keeps the store alive as long as the run holds the set."""

    name: str
    store: object  # the SiteStore actor handle
    store_name: str  # its name, as Ray's state API lists it
    counts: tuple[int, ...]
    repeat: int = 1

    @property
    def num_rows(self) -> int:
        return sum(self.counts) * self.repeat

    def resolve(self) -> RowBlocks:
        """The set's RowBlocks from its store; call it only on the domain's own site."""
        import ray

        return ray.get(self.store.row_blocks.remote(self.name))


def open_store(domain: str, selector: Mapping[str, str]):
    """(a new SiteStore actor on a node `selector` matches, its name)."""
    import ray

    name = f"{STORE_PREFIX}:{domain}:{secrets.token_hex(4)}"
    actor = ray.remote(SiteStore).options(name=name, label_selector=dict(selector), num_cpus=0).remote(domain)
    return actor, name


def read_on_site(store, store_name: str, name: str, files, ids, columns, *, repeat: int, shuffle: bool, selector, domain: str) -> SiteRows:
    """Have the domain's store read a set; the driver keeps the counts and the store's name."""
    from raymh.data.site_reads import site_get

    ref = store.read.remote(name, list(files), list(ids), list(columns), repeat=repeat, shuffle=shuffle)
    counts = site_get(ref, selector, domain=domain)
    return SiteRows(name, store, store_name, tuple(counts), repeat=repeat)
