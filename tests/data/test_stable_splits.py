"""Stable hash splits: the same on every run and machine, a partition, and roughly the right size."""

from __future__ import annotations

from embedplug.data.splits import HOLDOUT_FRACTION, is_held_out, split, stable_unit_hash


def test_hash_is_a_fixed_function_of_the_key():
    # A golden value: if this changes, every published held-out number changes with it.
    assert stable_unit_hash("00001740-n") == stable_unit_hash("00001740-n")
    assert round(stable_unit_hash("00001740-n"), 12) == GOLDEN_00001740_N


def test_split_is_a_partition_ordered_by_hash():
    keys = [f"{offset:08d}-n" for offset in range(2000)]
    train, held_out = split(keys, key=str)
    assert sorted(train + held_out) == sorted(keys)
    assert all(is_held_out(key) for key in held_out) and not any(is_held_out(key) for key in train)
    assert [stable_unit_hash(k) for k in train] == sorted(stable_unit_hash(k) for k in train)


def test_held_out_fraction_is_close_to_the_constant():
    keys = [f"{offset:08d}-v" for offset in range(20000)]
    _, held_out = split(keys, key=str)
    assert abs(len(held_out) / len(keys) - HOLDOUT_FRACTION) < 0.01


def test_split_does_not_depend_on_input_order():
    keys = [f"{offset:08d}-a" for offset in range(500)]
    assert split(keys, key=str) == split(list(reversed(keys)), key=str)


GOLDEN_00001740_N = 0.202452823802
