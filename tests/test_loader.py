"""The one batching path: global batches cut exactly into per-process shards and micro-steps."""
from __future__ import annotations

import pytest
import torch

from maskfit.data import collate, plan
from maskfit.data.loader import batches

LENGTHS = [(i * 37) % 101 + 1 for i in range(203)]  # 203: the last global batch is ragged


def _steps(pieces):
    """step -> the indices of all pieces of that step, in order."""
    out = {}
    for p in pieces:
        if p.weight:
            out.setdefault(p.step, []).extend(p.indices)
    return out


@pytest.mark.parametrize("order", ["shuffle", "length", "input"])
@pytest.mark.parametrize("shards,accum", [(2, 1), (3, 1), (2, 2), (1, 4)])
def test_shards_of_a_global_batch_are_the_single_process_batch(order, shards, accum):
    per = 4
    single = plan(LENGTHS, per * shards * accum, order=order, seed=5)
    steps_single = {p.step: p.indices for p in single}
    union: dict[int, list[int]] = {}
    for shard in range(shards):
        pieces = plan(LENGTHS, per, order=order, seed=5, num_shards=shards, shard=shard, accum=accum)
        # every shard runs the same number of optimizer steps (no process waits in an all-reduce alone)
        assert sum(p.last for p in pieces) == len(steps_single)
        for step, idx in _steps(pieces).items():
            union.setdefault(step, []).extend(idx)
    assert {k: sorted(v) for k, v in union.items()} == {k: sorted(v) for k, v in steps_single.items()}
    flat = [i for v in union.values() for i in v]
    assert sorted(flat) == list(range(len(LENGTHS)))  # every example exactly once, none repeated


def test_step_items_count_the_whole_global_batch():
    items = [i % 3 for i in range(len(LENGTHS))]  # e.g. labelled tokens per tagging example
    for shard in range(2):
        for p in plan(LENGTHS, 8, order="shuffle", seed=1, num_shards=2, shard=shard, items=items):
            whole = [q for q in plan(LENGTHS, 16, order="shuffle", seed=1) if q.step == p.step][0]
            assert p.step_items == sum(items[i] for i in whole.indices)


def test_an_empty_shard_gets_a_zero_weight_stand_in():
    pieces = plan([5, 6, 7], 2, order="length", num_shards=4, shard=3)
    assert len(pieces) == 1 and pieces[0].weight == 0.0 and pieces[0].last and len(pieces[0].indices) == 1
    assert [p.indices for p in plan([5, 6, 7], 2, order="length", num_shards=4, shard=0)] == [[0]]


def test_batches_collate_through_a_dataloader():
    feats = [{"input_ids": list(range(n)), "attention_mask": [1] * n, "labels": n % 2} for n in (3, 9, 5, 2, 7)]
    got = list(batches(feats, 0, 2, order="length"))
    assert [p.indices for p, _ in got] == [[3, 0], [2, 4], [1]]
    for piece, batch in got:
        ref = collate([feats[i] for i in piece.indices], 0)
        assert batch.keys() == ref.keys() and all(torch.equal(batch[k], ref[k]) for k in ref)


def test_bad_batching_is_refused():
    with pytest.raises(ValueError):
        plan(LENGTHS, 0)
    with pytest.raises(ValueError):
        plan(LENGTHS, 4, num_shards=2, shard=2)
