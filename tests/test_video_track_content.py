"""Track queries made of decoder embeddings: the model's extra-content hook, the reads of a
track's past (gradients, an oracle, properties), the host-side histories, and training and
tracking with each switch (tiny preset)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidetr.gradcheck import gradcheck
from minidetr.model import PRESETS, MiniDETR
from minidetr.outputs import DN, MAIN, Predictions, QueryGroup, SetOutputs
from minidetr.video.commands import load_tracker, write_tracks
from minidetr.video.track_content import (
    READ_PARAMS,
    ContentSpec,
    init_track_content_params,
    slot_content_backward,
    slot_content_forward,
    track_content_backward,
    track_content_forward,
)
from minidetr.video.track_history import HistoryConfig, TrackHistory, gather_histories
from minidetr.video.track_queries import decoder_queries, make_track_queries
from minidetr.video.track_train import TrackRun, TrackTrainConfig

pytest.importorskip("motmetrics")
TOL = 1e-7
LIKE = np.zeros(1, dtype=np.float32)
TINY = TrackTrainConfig(
    preset="tiny-deformable", detect_steps=1, track_steps=2, batch_size=3, train_clips=8,
    val_clips=2,
)  # fmt: skip


def _read_inputs(seed=0, n=5, w=3, k=4, d=8):
    r = np.random.default_rng(seed)
    like = np.zeros(1)
    p = init_track_content_params(d, memory=True, window=w, like=like, seed=seed)
    p = {k_: v + 0.2 * r.standard_normal(v.shape) for k_, v in p.items()}  # non-zero outputs
    valid = r.random((n, k)) < 0.6
    valid[0] = False  # a track with an empty bank
    return (
        r.standard_normal((n, d)),
        p,
        r.standard_normal((n, w, d)),
        r.standard_normal((n, k, d)),
        valid,
    )


def test_track_content_gradients_match_finite_differences():
    emb, p, window, slots, valid = _read_inputs()
    names = sorted(p)

    def forward(*values):
        return track_content_forward(
            emb, dict(zip(names, values)), window=window, slots=slots, valid=valid, num_heads=2
        )

    def backward(dc, cache):
        grads = track_content_backward(dc, cache)
        return tuple(grads[k] for k in names)

    result = gradcheck(forward, backward, [p[k] for k in names], names=names)
    assert result.max_error < TOL, result.report()


def test_slot_content_places_each_track_and_its_gradient_matches():
    """Three tracks in two clips of two slots: the padding slot gets zeros and no gradient."""
    cfg = HistoryConfig(memory_size=2, window=2)
    r = np.random.default_rng(3)
    tracks = []
    for seen in (1, 2, 4):
        h = TrackHistory(cfg)
        for _ in range(seen):
            h.observe(r.standard_normal(8), r.random())
        tracks.append(h)
    filled = np.array([[True, True], [False, True]])
    p = init_track_content_params(8, memory=True, window=2, like=np.zeros(1), seed=1)
    p = {k: v + 0.2 * r.standard_normal(v.shape) for k, v in p.items()}
    names = sorted(p)

    def forward(*values):
        spec = ContentSpec("add", dict(zip(names, values)), cfg, 2)
        return slot_content_forward(tracks, filled, spec, np.zeros(1))

    out, _ = forward(*(p[k] for k in names))
    assert out.shape == (2, 2, 8) and not out[1, 0].any()
    g = gather_histories(tracks[2:], cfg, 8)  # the third track, read alone, fills slot (1, 1)
    alone, _ = track_content_forward(
        g["emb"], p, window=g["window"], slots=g["slots"], valid=g["valid"], num_heads=2
    )
    np.testing.assert_allclose(out[1, 1], alone[0], atol=1e-12)
    result = gradcheck(
        forward,
        lambda d, c: tuple(slot_content_backward(d, c)[k] for k in names),
        [p[k] for k in names],
        names=names,
    )
    assert result.max_error < TOL, result.report()
    with pytest.raises(ValueError, match="histories"):
        slot_content_forward(tracks[:2], filled, ContentSpec("add", p, cfg, 2), np.zeros(1))


def test_one_memory_slot_and_a_window_of_one_match_the_closed_form():
    """Attention over one key is that key's value: c = x + Wo (Wv s + bv) + bo."""
    emb, p, window, slots, _ = _read_inputs(n=3, w=1, k=1)
    d = emb.shape[1]
    c, _ = track_content_forward(
        emb, p, window=window, slots=slots, valid=np.ones((3, 1), bool), num_heads=2
    )
    x = emb.copy()
    for prefix, src in (("aggregation", window[:, 0]), ("memory", slots[:, 0])):
        in_w, in_b = p[f"{prefix}.in_w"], p[f"{prefix}.in_b"]
        value = src @ in_w[2 * d :].T + in_b[2 * d :]
        x = x + value @ p[f"{prefix}.out_w"].T + p[f"{prefix}.out_b"]
    np.testing.assert_allclose(c, x, atol=1e-12)


def test_fresh_reads_pass_the_embedding_through():
    emb, _, window, slots, valid = _read_inputs()
    fresh = init_track_content_params(8, memory=True, window=3, like=np.zeros(1))
    c, _ = track_content_forward(emb, fresh, window=window, slots=slots, valid=valid, num_heads=2)
    np.testing.assert_array_equal(c, emb)
    assert init_track_content_params(8, memory=False, window=0, like=np.zeros(1)) == {}
    with pytest.raises(ValueError, match="window"):
        track_content_forward(emb, fresh, slots=slots, valid=valid, num_heads=2)


@given(st.integers(0, 3), st.integers(0, 3), st.lists(st.floats(0.0, 1.0), min_size=1, max_size=9))
def test_a_history_keeps_its_window_and_bank_bounded(k, w, scores):
    cfg = HistoryConfig(memory_size=k, window=w, policy="fifo")
    h = TrackHistory(cfg)
    for i, s in enumerate(scores):
        h.observe(np.full(2, float(i)), s)
    seen = len(scores)
    assert h.current[0] == seen - 1
    assert [e[0] for e in h.past] == list(range(max(0, seen - 1 - w), seen - 1))[-w:][: w or 0]
    g = gather_histories([h], cfg, 2)
    assert g["window"].shape == (1, w, 2) and g["slots"].shape == (1, k, 2)
    if w:  # oldest first, padded in front with the oldest known (the current one if none)
        known = [float(i) for i in range(max(0, seen - 1 - w), seen - 1)] or [seen - 1.0]
        assert list(g["window"][0, :, 0]) == [known[0]] * (w - len(known)) + known
    if k:  # fifo: the newest min(K, seen - 1) earlier embeddings
        kept = sorted(g["slots"][0, g["valid"][0], 0])
        assert kept == [float(i) for i in range(seen - 1)][-k:][: seen - 1]


def test_gather_refuses_a_track_never_seen():
    with pytest.raises(ValueError, match="observe"):
        gather_histories([TrackHistory(HistoryConfig())], HistoryConfig(), 4)


def test_model_dn_content_hook_gradient_and_embeddings():
    model = MiniDETR(replace(PRESETS["tiny-deformable"], dropout=0.0))
    params = model.init_params(seed=1, like=np.zeros(1))
    r = np.random.default_rng(0)
    images = r.standard_normal((2, 3, model.config.image_size, model.config.image_size))
    tq = make_track_queries(
        [(np.array([0, 1]), np.array([0, 1]), np.array([[0.3, 0.3, 0.2, 0.2]] * 2))] * 2,
        model.config.num_classes,
    )
    dn = decoder_queries(tq, model.config.num_queries, np.zeros(1))
    plain, _ = model.forward(params, images, train=False, denoising=dn)
    zero, cache = model.forward(
        params, images, train=False, denoising=dn, dn_content=np.zeros((2, 2, model.config.d_model))
    )
    np.testing.assert_array_equal(plain.pred_boxes, zero.pred_boxes)  # backward compatible
    emb = model.query_embeddings(cache)
    assert emb.shape == (2, 2 + model.config.num_queries, model.config.d_model)
    detached = cache.detached

    def forward(content):
        out, c = model.forward(
            params, images, train=False, denoising=dn, dn_content=content, detached=detached
        )
        track = out.group(DN).layers[-1]
        return np.concatenate([track.logits, track.boxes], axis=-1), c

    def backward(dout, c):
        k = model.config.num_logits
        last = (dout[..., :k], dout[..., k:])
        none = QueryGroup((Predictions(None, None),))
        groups = {MAIN: none, DN: QueryGroup((Predictions(*last),))}
        return model.backward_dn_content(SetOutputs(groups), c)[1]

    content = 0.5 * r.standard_normal((2, 2, model.config.d_model))
    result = gradcheck(forward, backward, [content], max_entries=12)
    assert result.max_error < 1e-6, result.report()
    with pytest.raises(ValueError, match="dn_content"):
        model.forward(params, images, train=False, denoising=dn, dn_content=content[:, :1])
    with pytest.raises(ValueError, match="denoising"):
        model.forward(params, images, train=False, dn_content=content)


@pytest.mark.parametrize(
    "switches",
    [
        {"track_embedding": "replace"},
        {"track_embedding": "add", "memory_size": 2, "aggregation_window": 2},
        {"track_embedding": "add", "memory_size": 2, "aggregation_window": 2, "chain": True},
    ],
)
def test_training_and_tracking_with_embeddings(tmp_path, switches):
    cfg = replace(TINY, **switches)
    a, b = TrackRun(cfg, LIKE), TrackRun(cfg, LIKE)
    records = [a.train_step() for _ in range(cfg.steps)]
    assert [b.train_step()["loss"] for _ in range(cfg.steps)] == [r["loss"] for r in records]
    assert all(np.isfinite(r["loss"]) for r in records)
    reads = ("memory", "aggregation") if "memory_size" in switches else ()
    assert sorted({k.split(".")[0] for k in a.track_params}) == sorted(reads)
    for prefix in reads:  # the output projections start at zero: only a gradient moves them
        assert np.any(a.track_params[f"{prefix}.out_w"] != 0)
    a.save(tmp_path / "ck.npz")
    back = load_tracker(tmp_path / "ck.npz", LIKE)
    for k, v in a.track_params.items():
        np.testing.assert_array_equal(back.track_params[k], v)
    assert back.track_opt.step == a.track_opt.step
    m = write_tracks(back, tmp_path / "tracks", gifs=False)
    assert m["track_content"].startswith("class embedding + decoder" if "memory_size" in switches
                                         else "decoder embedding")  # fmt: skip


def test_config_refuses_reads_without_embeddings():
    with pytest.raises(ValueError, match="track_embedding"):
        TrackTrainConfig(memory_size=2)
    with pytest.raises(ValueError, match="track_embedding"):
        TrackTrainConfig(track_embedding="both")
    with pytest.raises(ValueError, match="track_embedding"):
        TrackTrainConfig(chain=True)
    assert set(READ_PARAMS) == {"in_w", "in_b", "out_w", "out_b"}
