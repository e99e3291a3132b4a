"""Every built-in dataset takes its splits from one place, data/dataset.py."""

from __future__ import annotations

import pytest

from minidetr.data import DATASETS
from minidetr.data.dataset import SPLITS, check_split


def test_check_split_numbers_each_split():
    assert [check_split(s) for s in SPLITS] == list(range(len(SPLITS)))


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_dataset_refuses_an_unknown_split(name):
    if name == "digits":
        pytest.importorskip("sklearn")
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'val'\], got 'test'"):
        DATASETS[name]("test")


def test_digits_splits_use_disjoint_handwriting():
    pytest.importorskip("sklearn")
    train, val = DATASETS["digits"]("train"), DATASETS["digits"]("val")
    seen = {glyph.tobytes() for glyph in train._glyphs}
    assert not any(glyph.tobytes() in seen for glyph in val._glyphs)
