"""Independent random streams, one per (seed, purpose, domain, rank, index): the one rule for every seed.

A stream is `numpy.random.SeedSequence(entropy=seed, spawn_key=(purpose, domain, rank, index))`, each key
word a uint32, so two different keys never name the same stream (no sums of integers that collide, as
`seed + rank` would for seed 1 on rank 0 and seed 0 on rank 1). The purposes keep what one part of a run
draws apart from every other part: the labeled crops of a supervised run and of a semi-supervised run of
the same seed come from the same streams, whatever the unlabeled images draw (docs/evidence.md).

- `labeled_aug`: scale, crop and flip of the n-th labeled batch of a domain on a rank;
- `unlabeled_pair`: the crop-pair geometry (scale, offsets, flips) of the n-th unlabeled batch;
- `unlabeled_photo`: the two crops' photometric augmentation (blur, colour jitter, grey) of that batch;
- `row_order`: a set's row permutation in epoch e (the same on every rank: keyed by rank 0);
- `init`: the model's initial weights (the same on every rank);
- `rank_torch`: a rank's torch / numpy / Python global generators from a step on;
- `dropout`: one sample's dropout masks at a step (`sample_seed`: keyed by the sample, not the rank, so a
  sample is dropped alike on any worker count; `raymh.model.dropout`).

No Ray, torch or raymh imports: every floor may use it.
"""

from __future__ import annotations

import hashlib

import numpy as np

PURPOSES = ("labeled_aug", "unlabeled_pair", "unlabeled_photo", "row_order", "init", "rank_torch", "dropout")
NO_DOMAIN = "-"  # the domain word of streams that belong to no domain (init, a rank's generators)
_WORD = 2**32


def domain_word(name: str) -> int:
    """A stable uint32 of a domain (or set) name; distinct for distinct names up to sha256 collisions of
    32 bits, which `stream_key` never meets among a run's few domains (checked by `check_domain_words`)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")


def check_domain_words(names) -> None:
    """Refuse domain names whose words coincide (1 in 4e9 per pair): their streams would be one."""
    seen: dict[int, str] = {}
    for name in names:
        word = domain_word(name)
        if word in seen and seen[word] != name:
            raise ValueError(f"domains {seen[word]!r} and {name!r} share a random-stream key; rename one of them")
        seen[word] = name


def stream_key(seed: int, purpose: str, *, domain: str = NO_DOMAIN, rank: int = 0, index: int = 0) -> np.random.SeedSequence:
    """The SeedSequence of one stream. seed: train.seed (>= 0); index: a batch, epoch or step counter."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown random-stream purpose {purpose!r}; one of {', '.join(PURPOSES)}")
    for name, value in (("seed", seed), ("rank", rank), ("index", index)):
        if not 0 <= int(value) < (2**63 if name == "seed" else _WORD):
            raise ValueError(f"random-stream {name} must be in [0, {2**63 if name == 'seed' else _WORD}), got {value}")
    return np.random.SeedSequence(
        entropy=int(seed), spawn_key=(PURPOSES.index(purpose), domain_word(domain), int(rank), int(index))
    )


def generator(seed: int, purpose: str, *, domain: str = NO_DOMAIN, rank: int = 0, index: int = 0) -> np.random.Generator:
    """A numpy Generator on one stream."""
    return np.random.Generator(np.random.PCG64(stream_key(seed, purpose, domain=domain, rank=rank, index=index)))


def int_seed(seed: int, purpose: str, *, domain: str = NO_DOMAIN, rank: int = 0, index: int = 0) -> int:
    """A 63-bit integer of one stream, for seeding torch / Python generators that take an int."""
    state = stream_key(seed, purpose, domain=domain, rank=rank, index=index).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def sample_seed(seed: int, purpose: str, *, domain: str, part: int, index: int, step: int) -> int:
    """A 63-bit integer of one sample's stream at a step: part (0 labeled, 1 crop 1, 2 crop 2) and index (the
    sample's place in its domain's global batch) take the place of a rank, so the key names the sample."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown random-stream purpose {purpose!r}; one of {', '.join(PURPOSES)}")
    words = (PURPOSES.index(purpose), domain_word(domain), int(part), int(index), int(step))
    if not all(0 <= w < _WORD for w in words):
        raise ValueError(f"random-stream key words must be in [0, {_WORD}), got {words}")
    state = np.random.SeedSequence(entropy=int(seed), spawn_key=words).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])
