"""Temporal aggregation, the bounded memory bank and the consistency loss: oracles, gradients,
properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidetr.backend import to_numpy
from minidetr.gradcheck import gradcheck
from minidetr.video.aggregation import (
    init_aggregation_params,
    temporal_aggregation_backward,
    temporal_aggregation_forward,
)
from minidetr.video.consistency import velocity_consistency_backward, velocity_consistency_forward
from minidetr.video.memory import (
    empty_memory,
    memory_read_backward,
    memory_read_forward,
    memory_write,
)

TOL = 1e-7
AGG_NAMES = ("x", "past", "age", "in_w", "in_b", "out_w", "out_b")


def _agg_inputs(xp, seed=0, b=2, w=3, n=4, d=6, wmax=4):
    r = np.random.default_rng(seed)
    x = r.standard_normal((b, n, d))
    past = r.standard_normal((b, w, n, d))
    p = init_aggregation_params(d, wmax, like=x, seed=seed)
    p = {k: v + 0.1 * r.standard_normal(v.shape) for k, v in p.items()}  # non-zero biases
    return [
        xp.asarray(a) for a in (x, past, p["age"], p["in_w"], p["in_b"], p["out_w"], p["out_b"])
    ]


def _softmax(s):
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_aggregation_matches_a_loop_over_past_tokens():
    x, past, age, in_w, in_b, out_w, out_b = _agg_inputs(np, w=2, wmax=4)
    y, _ = temporal_aggregation_forward(x, past, age, in_w, in_b, out_w, out_b, num_heads=1)
    d = x.shape[-1]
    for b in range(x.shape[0]):
        keys, values = [], []
        for w in range(past.shape[1]):  # oldest first; the previous frame uses age[-1]
            for n in range(past.shape[2]):
                tagged = past[b, w, n] + age[age.shape[0] - past.shape[1] + w]
                keys.append(in_w[d : 2 * d] @ tagged + in_b[d : 2 * d])
                values.append(in_w[2 * d :] @ past[b, w, n] + in_b[2 * d :])
        keys, values = np.array(keys), np.array(values)
        for n in range(x.shape[1]):
            q = in_w[:d] @ x[b, n] + in_b[:d]
            p = _softmax(keys @ q / np.sqrt(d))
            want = x[b, n] + out_w @ (p @ values) + out_b
            np.testing.assert_allclose(y[b, n], want, rtol=1e-12, atol=1e-12)


def test_aggregation_gradients(xp):
    def forward(*a):
        return temporal_aggregation_forward(*a, num_heads=2)

    result = gradcheck(forward, temporal_aggregation_backward, _agg_inputs(xp), names=AGG_NAMES)
    assert result.max_error < TOL, result.report()


def test_aggregation_rejects_a_window_longer_than_its_ages():
    x, past, age, *rest = _agg_inputs(np, w=3, wmax=2)
    with pytest.raises(ValueError, match="age"):
        temporal_aggregation_forward(x, past, age, *rest, num_heads=2)


def _marked(b, e, d, start):
    """Entries whose first feature is a serial number, so a test can tell which were kept."""
    out = np.zeros((b, e, d))
    out[:, :, 0] = start + np.arange(e)
    return out


@given(st.integers(1, 5), st.lists(st.integers(1, 4), min_size=1, max_size=6))
def test_fifo_memory_keeps_the_newest_k(size, writes):
    bank = empty_memory(2, size, 3, like=np.zeros(1))
    serial = 0
    for e in writes:
        bank = memory_write(bank, _marked(2, e, 3, serial), policy="fifo")
        serial += e
        assert bank.slots.shape == (2, size, 3)  # bounded, whatever was written
    kept = sorted(bank.slots[0, bank.valid[0], 0].tolist())
    assert kept == list(range(serial))[-size:]


@given(
    st.integers(1, 4),
    st.lists(st.lists(st.floats(0.01, 1.0), min_size=1, max_size=3), min_size=1, max_size=5),
)
def test_score_memory_keeps_the_highest_decayed_scores(size, score_lists):
    decay = 0.5
    bank = empty_memory(1, size, 2, like=np.zeros(1))
    everything, serial = [], 0  # brute force: every entry ever written with its decayed score
    for scores in score_lists:
        everything = [(s * decay, i) for s, i in everything]
        everything += [(s, serial + j) for j, s in enumerate(scores)]
        entries = _marked(1, len(scores), 2, serial)
        bank = memory_write(bank, entries, np.array([scores]), policy="score", decay=decay)
        serial += len(scores)
        everything = sorted(everything, key=lambda si: (-si[0], -si[1]))[:size]
    kept = sorted(bank.slots[0, bank.valid[0], 0].astype(int).tolist())
    assert kept == sorted(i for _, i in everything)
    np.testing.assert_allclose(
        sorted(bank.score[0, bank.valid[0]].tolist()), sorted(s for s, _ in everything)
    )


def test_memory_read_gradients_and_empty_slots(xp):
    r = np.random.default_rng(3)
    d = 4
    bank = empty_memory(2, 5, d, like=xp.asarray(np.zeros(1)))
    bank = memory_write(bank, xp.asarray(r.standard_normal((2, 3, d))))  # 2 slots stay empty
    queries = xp.asarray(r.standard_normal((2, 4, d)))
    in_w, in_b = xp.asarray(r.standard_normal((3 * d, d))), xp.asarray(r.standard_normal(3 * d))
    out_w, out_b = xp.asarray(r.standard_normal((d, d))), xp.asarray(r.standard_normal(d))
    slots = bank.slots + xp.asarray(r.standard_normal((2, 5, d)))  # junk in the empty slots

    def forward(q, s, a, b_, c, e):
        return memory_read_forward(q, s, bank.valid, a, b_, c, e, num_heads=2)

    inputs = [queries, slots, in_w, in_b, out_w, out_b]
    names = ["queries", "slots", "in_w", "in_b", "out_w", "out_b"]
    result = gradcheck(forward, memory_read_backward, inputs, names=names)
    assert result.max_error < TOL, result.report()
    y, cache = forward(*inputs)
    dslots = to_numpy(memory_read_backward(xp.ones_like(y), cache)[1])
    assert np.all(dslots[~to_numpy(bank.valid)] == 0.0)  # forgotten or empty: no gradient


def test_an_empty_memory_reads_nothing():
    r = np.random.default_rng(0)
    bank = empty_memory(1, 3, 4, like=np.zeros(1))
    q = r.standard_normal((1, 2, 4))
    out_b = r.standard_normal(4)
    y, _ = memory_read_forward(
        q, bank.slots, bank.valid, r.standard_normal((12, 4)), np.zeros(12),
        r.standard_normal((4, 4)), out_b, num_heads=1,
    )  # fmt: skip
    np.testing.assert_allclose(y, q + out_b)


def test_memory_write_checks_its_arguments():
    bank = empty_memory(1, 2, 3, like=np.zeros(1))
    with pytest.raises(ValueError, match="policy"):
        memory_write(bank, np.zeros((1, 1, 3)), policy="lru")
    with pytest.raises(ValueError, match="entries"):
        memory_write(bank, np.zeros((1, 1, 4)))
    with pytest.raises(ValueError, match="size"):
        empty_memory(1, 0, 3, like=np.zeros(1))


@pytest.mark.parametrize("with_target", [True, False])
def test_consistency_gradients(xp, with_target):
    r = np.random.default_rng(5)
    pred = xp.asarray(r.random((5, 3, 4)))
    target = xp.asarray(r.random((5, 3, 4))) if with_target else None
    valid = xp.asarray(r.random((5, 3)) > 0.2)

    def forward(p):
        return velocity_consistency_forward(p, target, valid)

    assert gradcheck(forward, velocity_consistency_backward, [pred]).max_error < TOL


@given(st.integers(0, 2**32 - 1))
def test_consistency_is_zero_for_boxes_moving_as_the_truth_and_for_constant_velocity(seed):
    r = np.random.default_rng(seed)
    target = r.random((6, 2, 4))
    valid = np.ones((6, 2), dtype=bool)
    shifted = target + r.standard_normal(4)  # a constant offset keeps every velocity
    assert velocity_consistency_forward(shifted, target, valid)[0] == pytest.approx(0, abs=1e-24)
    line = r.random((1, 2, 4)) + np.arange(6)[:, None, None] * r.standard_normal((1, 2, 4))
    assert velocity_consistency_forward(line, None, valid)[0] == pytest.approx(0, abs=1e-20)
    jitter = target.copy()
    jitter[3] += 0.01
    assert velocity_consistency_forward(jitter, target, valid)[0] > 0


def test_consistency_counts_only_pairs_matched_in_both_frames():
    pred = np.zeros((3, 1, 4))
    pred[1] = 5.0  # a wild box in frame 1 ...
    valid = np.array([[True], [False], [True]])  # ... where the object is not matched
    loss, _ = velocity_consistency_forward(pred, np.zeros((3, 1, 4)), valid)
    assert loss == 0.0
