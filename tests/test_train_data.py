"""The training batches: the prefetch thread changes when a batch is made, never which;
loader worker processes draw views that depend on neither their number nor on which drew them."""

import pickle
import threading
import time

import numpy as np
import pytest
import torch

from kdray.data import load_split, prepare_data
from kdray.data.augment import build_train_augmentation
from kdray.spec.job import JobError, parse_job
from kdray.tasks.models import create_model
from kdray.train import soft_labels
from kdray.train.batches import TrainSet, prefetched, train_batches
from tests.conftest import tiny_job_dict


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


# --- loader worker processes ----------------------------------------------------------------


@pytest.fixture(scope="module")
def mapped(tmp_path_factory):
    """A memory-mapped training split, as `load_split` opens it."""
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("split") / "train_images.npy"
    np.save(path, rng.integers(0, 255, (70, 16, 16, 1), dtype=np.uint8))
    return np.load(path, mmap_mode="r"), rng.integers(0, 3, 70)


def drawn(batches, epoch: int) -> list:
    return [tuple(t.clone() for t in batch) for batch in batches.epoch(epoch)]


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x, y) for p, q in zip(a, b, strict=True) for x, y in zip(p, q, strict=True)
    )


def test_in_process_batches_are_unchanged(mapped):
    """loader_workers 0: the seeded permutation, and one pipeline drawing the epoch in order."""
    images, labels = mapped
    batches = train_batches(images, labels, True, [0.5], [0.25], 16, seed=3, prefetch=2)
    assert batches.loader.num_workers == 0
    epoch = drawn(batches, 1)
    order = torch.cat([i for _, _, i in epoch]).tolist()
    assert order[:6] == [27, 31, 45, 66, 57, 7]  # as before loader workers existed
    augment = build_train_augmentation(True, seed=3 * 1000)
    augment.set_random_seed(3 * 1000 * 1000 + 1)  # (seed, rank 0, epoch 1)
    plain = TrainSet(images, labels, augment, [0.5], [0.25])
    expected = torch.stack([plain[i][0] for i in order])
    assert torch.equal(torch.cat([x for x, _, _ in epoch]), expected)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("world_size", [1, 2])
def test_worker_batches_do_not_depend_on_the_number_of_workers(mapped, world_size):
    images, labels = mapped
    one, two = (
        train_batches(
            images,
            labels,
            True,
            [0.5],
            [0.25],
            16,
            seed=3,
            rank=world_size - 1,
            world_size=world_size,
            workers=n,
        )  # fmt: skip
        for n in (1, 2)
    )
    assert two.loader.num_workers == 2 and two.loader.persistent_workers
    first = {epoch: drawn(one, epoch) for epoch in (0, 1)}
    for epoch in (0, 1, 0, 1):  # persistent workers, re-drawn: the same batches
        assert same(drawn(two, epoch), first[epoch])
    assert not same(first[0], first[1])
    in_process = train_batches(images, labels, True, [0.5], [0.25], 16, seed=3)
    assert not same(drawn(in_process, 0), first[0])  # other views: the cache key says so


def test_an_epoch_cut_short_does_not_change_the_next(mapped):
    images, labels = mapped
    batches = train_batches(images, labels, True, [0.5], [0.25], 16, seed=3, workers=2)
    whole = drawn(batches, 1)
    it = iter(batches.epoch(0))
    next(it)
    it.close()  # a defective teacher stops inside its band
    assert same(drawn(batches, 1), whole)


def test_a_memory_mapped_split_travels_to_workers_as_its_path(mapped):
    images, labels = mapped
    dataset = TrainSet(images, labels, None, [0.5], [0.25])
    sent = pickle.dumps(dataset)
    assert len(sent) < images.nbytes  # not the array
    received = pickle.loads(sent)
    assert isinstance(received.images, np.memmap)
    assert np.array_equal(received.images, images)
    copied = pickle.loads(pickle.dumps(TrainSet(np.array(images), labels, None, [0.5], [0.25])))
    assert np.array_equal(copied.images, images)  # an in-memory array is sent whole


@pytest.mark.timeout(180)
def test_the_cache_replays_the_views_students_draw_in_workers(tmp_path):
    """The teacher replays with loader workers; a student drawing with another worker count
    sees the views the cache holds, position by position, every epoch."""
    raw = tiny_job_dict(tmp_path)
    raw["train"] |= {"loader_workers": 2, "batch_size": 32}
    job = parse_job(raw)
    info = prepare_data(job.data, tmp_path / "data")
    torch.manual_seed(0)
    teacher = create_model("test_resnet", info.num_classes, info.channels).eval()
    path = soft_labels.build(teacher, job, 5, info, "cpu", tmp_path)
    cache = np.load(path)
    key = soft_labels.cache_key(job, 5, info)
    assert key["views"] == "per-sample seeds"
    in_process = job.model_copy(
        update={"train": job.train.model_copy(update={"loader_workers": 0})}
    )
    assert "views" not in soft_labels.cache_key(in_process, 5, info)
    images, labels = load_split(info.path, "train")
    student = train_batches(
        images, labels, job.train.augment, info.mean, info.std, 32, 5, workers=1
    )
    for epoch in range(job.train.epochs):
        x = torch.cat([x for x, _, _ in student.epoch(epoch)])
        with torch.no_grad():
            online = teacher(x)
        cached = torch.from_numpy(cache[epoch, 0, : len(x)].astype(np.float32))
        assert torch.allclose(cached, online, rtol=2e-3, atol=2e-3)
    assert not np.allclose(cache[0], cache[1])


def test_loader_workers_is_a_validated_train_setting(tmp_path):
    raw = tiny_job_dict(tmp_path)
    assert parse_job(raw).train.loader_workers == 0  # the in-process path by default
    raw["train"]["loader_workers"] = -1
    with pytest.raises(JobError, match="loader_workers"):
        parse_job(raw)
