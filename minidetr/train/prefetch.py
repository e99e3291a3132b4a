"""The next step's images, drawn in a second process while this step trains.

Step ``t`` trains on the images at ``batch_indices(default_rng([seed, t]), ...)``, a
pure function of (seed, t); so a worker process can draw step t + 1's images while
the main process computes step t, and hand over exactly the images the main process
would have drawn itself. The main process still draws the indices (which advances its
generator exactly as before) and checks them against the worker's; whenever the
worker has nothing for the step asked (the first step, a trial step that is undone, a
resumed run) the images are drawn in-process. Prefetching changes when images are
drawn, never which: a run is the same with it or without it.

On two cores this uses the core that single-threaded training leaves idle. The worker
ignores Ctrl-C (the main process saves and stops); if it dies, drawing goes on in-process.
"""

from __future__ import annotations

import multiprocessing
import pickle
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from minidetr.data import Dataset
from minidetr.data.dataset import Sample


def batch_indices(gen: np.random.Generator, num_images: int, batch_size: int) -> np.ndarray:
    """The images of one step: ``batch_size`` draws with replacement, the step's first draw."""
    return gen.integers(num_images, size=batch_size)  # (B,)


_DATASET: Dataset | None = None  # the worker process's copy of the training set


def _load(dataset_bytes: bytes) -> None:
    global _DATASET
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    _DATASET = pickle.loads(dataset_bytes)


def _draw(seed: int, step: int, batch_size: int) -> tuple[np.ndarray, list[Sample]]:
    """In the worker: step ``step``'s indices and samples."""
    if _DATASET is None:  # the pool's initializer sets it before any task
        raise RuntimeError("the prefetch worker has no dataset")
    idx = batch_indices(np.random.default_rng([seed, step]), len(_DATASET), batch_size)
    return idx, [_DATASET[int(i)] for i in idx]


class Prefetcher:
    """Draws step ``t + 1``'s samples in one worker process while step ``t`` trains.

    dataset: the training set (picklable; a set that is not is drawn in-process);
    seed, batch_size: the run's. ``close()`` stops the worker.
    """

    def __init__(self, dataset: Dataset, seed: int, batch_size: int) -> None:
        self.dataset, self.seed, self.batch_size = dataset, seed, batch_size
        self._pending: tuple[int, Future] | None = None
        self.served = 0  # steps whose samples came from the worker
        try:
            payload = pickle.dumps(dataset)
        except (pickle.PicklingError, TypeError, AttributeError):
            self._pool = None  # draw in-process
            return
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),  # no forked threads
            initializer=_load,
            initargs=(payload,),
        )

    def samples(self, step: int, idx: np.ndarray, last_step: int) -> list[Sample]:
        """The samples at ``idx`` for step ``step``; queues step + 1 unless it is ``last_step``."""
        found = None
        if self._pending is not None and self._pending[0] == step:
            try:
                worker_idx, drawn = self._pending[1].result()
            except BrokenProcessPool:  # the worker was killed: carry on without it
                self.close()
            else:
                if np.array_equal(worker_idx, idx):  # always, unless a step's rule changed
                    found, self.served = drawn, self.served + 1
        self._pending = None
        if self._pool is not None and step + 1 < last_step:
            try:
                future = self._pool.submit(_draw, self.seed, step + 1, self.batch_size)
                self._pending = (step + 1, future)
            except BrokenProcessPool:
                self.close()
        return found if found is not None else [self.dataset[int(i)] for i in idx]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._pending = None
