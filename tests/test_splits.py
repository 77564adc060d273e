"""Label ratios: the seeded labeled subset and split files."""

from __future__ import annotations

import hashlib
import random

import pytest

from raymh.data.splits import (
    SplitError,
    choose_labeled,
    labeled_count,
    labeled_ids,
    read_split_file,
    write_split_lists,
)

IDS = [f"city_{i:06d}_{3 * i:06d}" for i in range(200)]


def test_labeled_ids_follow_the_documented_rank_rule():
    chosen = labeled_ids(IDS, fraction=0.125, seed=3)
    ranked = sorted(IDS, key=lambda i: hashlib.sha256(f"3:{i}".encode()).hexdigest())
    assert chosen == sorted(ranked[:25])


def test_labeled_ids_are_stable_across_runs_and_input_order():
    first = labeled_ids(IDS, fraction=0.25, seed=0)
    shuffled = IDS[:]
    random.Random(1).shuffle(shuffled)
    assert labeled_ids(shuffled, fraction=0.25, seed=0) == first
    assert labeled_ids(tuple(reversed(IDS)), fraction=0.25, seed=0) == first
    assert labeled_ids(IDS, fraction=0.25, seed=1) != first


def test_smaller_fractions_are_subsets_of_larger_ones():
    eighth = set(labeled_ids(IDS, fraction=1 / 8, seed=2))
    quarter = set(labeled_ids(IDS, fraction=1 / 4, seed=2))
    assert len(eighth) == 25 and len(quarter) == 50 and eighth < quarter
    assert labeled_ids(IDS, fraction=1.0, seed=2) == sorted(IDS)


def test_labeled_count_keeps_at_least_one():
    assert labeled_count(3, fraction=0.01) == 1
    assert labeled_count(2975, fraction=1 / 8) == 372
    assert labeled_count(7, fraction=1.0) == 7
    assert labeled_ids(["only"], fraction=0.1, seed=0) == ["only"]


@pytest.mark.parametrize("fraction", [0, -0.5, 1.01, 8, float("nan"), True, "0.5"])
def test_fraction_outside_zero_one_is_an_error(fraction):
    with pytest.raises(SplitError, match=r"labeled fraction must be .*\(0, 1\]"):
        labeled_ids(IDS, fraction=fraction, seed=0)


def test_empty_or_repeated_ids_are_errors():
    with pytest.raises(SplitError, match="no ids"):
        labeled_ids([], fraction=0.5, seed=0)
    with pytest.raises(SplitError, match=r"repeated: \['a'\]"):
        labeled_ids(["a", "b", "a"], fraction=0.5, seed=0)


def test_read_split_file_takes_ids_comments_and_unimatch_lines(tmp_path):
    path = tmp_path / "labeled.txt"
    path.write_text(
        "# 1/8 split\n"
        "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png gtFine/train/aachen/"
        "aachen_000000_000019_gtFine_labelTrainIds.png\n"
        "\n"
        "bochum_000000_000313   # a bare id\n"
        "images/10k/train/0a0a0b1a-7c39d841.jpg labels/sem_seg/masks/train/0a0a0b1a-7c39d841.png\n"
        "img/rgb/17.png\n"
    )
    expected = ["aachen_000000_000019", "bochum_000000_000313", "0a0a0b1a-7c39d841", "17"]
    assert read_split_file(path) == expected
    assert read_split_file(path, kind="cityscapes")[0] == "aachen_000000_000019"
    # the folder kind has no image suffix: the stem is the id
    assert read_split_file(path, kind="folder")[0] == "aachen_000000_000019_leftImg8bit"


def test_read_split_file_checks_ids_against_the_data(tmp_path):
    path = tmp_path / "split.txt"
    path.write_text("a\nb\nghost_1\nghost_2\n")
    assert read_split_file(path, known_ids={"a", "b", "ghost_1", "ghost_2", "c"}) == [
        "a",
        "b",
        "ghost_1",
        "ghost_2",
    ]
    with pytest.raises(SplitError, match=r"2 of 4 ids are not in the data, e\.g\. \['ghost_1', 'ghost_2'\]"):
        read_split_file(path, known_ids=["a", "b", "c"])


def test_read_split_file_errors_name_the_file(tmp_path):
    with pytest.raises(SplitError, match="cannot read split file"):
        read_split_file(tmp_path / "absent.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(SplitError, match=f"{empty} lists no ids"):
        read_split_file(empty)
    twice = tmp_path / "twice.txt"
    twice.write_text("a\nb\na\n")
    with pytest.raises(SplitError, match=r"twice.txt:3: id 'a' is listed twice \(first on line 1\)"):
        read_split_file(twice)


def test_split_lists_round_trip(tmp_path):
    chosen = choose_labeled(IDS, fraction=0.25, seed=9)
    assert sorted(chosen["labeled"] + chosen["unlabeled"]) == sorted(IDS)
    assert chosen["labeled"] == labeled_ids(IDS, fraction=0.25, seed=9)
    paths = write_split_lists(tmp_path / "splits", chosen["labeled"], chosen["unlabeled"])
    assert paths["labeled"].name == "labeled.txt" and paths["unlabeled"].name == "unlabeled.txt"
    assert read_split_file(paths["labeled"]) == chosen["labeled"]
    assert read_split_file(paths["unlabeled"]) == chosen["unlabeled"]
    again = choose_labeled(IDS, split_file=paths["labeled"])
    assert again == chosen
