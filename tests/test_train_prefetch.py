"""Batches drawn in a worker process: the same run as drawn in-process, step for step."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from test_train import LIKE
from test_train import TINY as TRAIN_TINY

from minidetr.data import ShapesDataset
from minidetr.train.loop import Run, train
from minidetr.train.prefetch import Prefetcher, batch_indices

TINY = replace(TRAIN_TINY, steps=5, batch_size=3)


def test_a_prefetched_run_equals_an_in_process_one(tmp_path):
    plain = train(TINY, tmp_path / "plain", LIKE)
    fetched = train(TINY, tmp_path / "fetched", LIKE, prefetch=True)
    assert fetched.prefetch is None  # the worker is stopped when training ends
    assert [h["loss"] for h in fetched.history] == [h["loss"] for h in plain.history]
    for name, p in plain.params.items():
        np.testing.assert_array_equal(fetched.params[name], p, err_msg=name)


def test_the_worker_draws_the_steps_own_images_and_any_other_step_is_drawn_here():
    data = ShapesDataset("train", num_images=50, image_size=32, seed=3)
    fetch = Prefetcher(data, seed=3, batch_size=4)
    try:
        for step in (0, 1, 2, 7, 8):  # 0 and 7: nothing queued for them; 1, 2, 8: queued
            idx = batch_indices(np.random.default_rng([3, step]), len(data), 4)
            got = fetch.samples(step, idx, last_step=20)
            for sample, i in zip(got, idx, strict=True):
                np.testing.assert_array_equal(sample.image, data[int(i)].image)
                np.testing.assert_array_equal(sample.boxes, data[int(i)].boxes)
        assert fetch.served == 3  # steps 1, 2 and 8 came from the worker
        assert fetch._pending is not None and fetch._pending[0] == 9
        idx = batch_indices(np.random.default_rng([3, 19]), len(data), 4)
        fetch.samples(19, idx, last_step=20)
        assert fetch._pending is None  # nothing is queued past the last step
    finally:
        fetch.close()


def test_a_run_without_prefetch_draws_in_process():
    run = Run(replace(TINY, steps=1), LIKE)
    assert run.prefetch is None
    run.train_step()
    assert run.step == 1


def test_a_killed_worker_leaves_the_drawing_to_the_main_process():
    data = ShapesDataset("train", num_images=20, image_size=32, seed=0)
    fetch = Prefetcher(data, seed=0, batch_size=2)
    try:
        idx = batch_indices(np.random.default_rng([0, 0]), len(data), 2)
        fetch.samples(0, idx, last_step=5)  # queues step 1
        for proc in list(fetch._pool._processes.values()):
            proc.kill()
            proc.join()
        for step in range(1, 5):
            idx = batch_indices(np.random.default_rng([0, step]), len(data), 2)
            got = fetch.samples(step, idx, last_step=5)
            for sample, i in zip(got, idx, strict=True):
                np.testing.assert_array_equal(sample.image, data[int(i)].image)
        assert fetch._pool is None  # the dead worker was noticed, without an error
    finally:
        fetch.close()
