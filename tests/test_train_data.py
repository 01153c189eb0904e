"""The training batches: the prefetch thread changes when a batch is made, never which."""

import threading
import time

import numpy as np
import pytest
import torch

from kdray.train_data import prefetched, train_batches


def batches(prefetch: int):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (70, 16, 16, 1), dtype=np.uint8)
    labels = rng.integers(0, 3, 70)
    return train_batches(images, labels, True, [0.5], [0.25], 16, seed=3, prefetch=prefetch)


def test_prefetched_batches_are_the_batches_of_the_epoch():
    direct, ahead = batches(0), batches(4)
    for epoch in (0, 1, 0):
        a, b = list(direct.epoch(epoch)), list(ahead.epoch(epoch))
        assert len(a) == len(b) == 4  # 70 images, batch 16, drop_last
        for (xa, ya, ia), (xb, yb, ib) in zip(a, b, strict=True):
            assert torch.equal(ia, ib) and torch.equal(ya, yb) and torch.equal(xa, xb)
    assert not torch.equal(next(direct.epoch(0))[0], next(direct.epoch(1))[0])


def test_breaking_out_early_stops_the_thread():
    it = batches(2).epoch(0)
    next(it)
    it.close()  # what a `break` in the training loop does to the generator
    assert not [t for t in threading.enumerate() if t.name == "kdray-prefetch"]


def test_an_error_while_preparing_a_batch_reaches_the_training_loop():
    def broken():
        yield 1
        raise OSError("bad image file")

    it = prefetched(broken(), 2)
    assert next(it) == 1
    with pytest.raises(OSError, match="bad image file"):
        next(it)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("left", [0, 1, 2, 3])
def test_stopping_early_never_hangs_the_prefetch_thread(left):
    """A defective teacher stops mid-epoch: with exactly `depth` batches left, the producer
    had already queued everything and must still notice the stop (it used to block for ever)."""
    batches = list(range(6))
    stream = prefetched(iter(batches), depth=2)
    taken = []
    for batch in stream:
        taken.append(batch)
        if len(taken) == len(batches) - left:
            time.sleep(0.3)  # the producer has filled the queue and waits to put the end
            break
    stream.close()  # what leaving a for loop over a generator does
    assert taken == batches[: len(batches) - left]
