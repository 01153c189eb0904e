"""The training batches: the prefetch thread changes when a batch is made, never which;
loader worker processes draw views that depend on neither their number nor on which drew them;
on the device path (the default) not even whether there are any, and a restart draws them again."""

import pickle
import threading
import time

import numpy as np
import pytest
import torch

from kdray.data import load_split, prepare_data
from kdray.data.augment import build_train_augmentation
from kdray.spec.job import JobError
from kdray.spec.load import parse_job
from kdray.spec.plan import make_plan
from kdray.tasks.models import create_model
from kdray.train import soft_labels
from kdray.train.batches import BatchSet, DeviceStage, TrainSet, prefetched, train_batches
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
    """The loader path, loader_workers 0: the seeded permutation, and one pipeline drawing the
    epoch in order (kdray's views before the device path)."""
    images, labels = mapped
    batches = train_batches(
        images, labels, True, [0.5], [0.25], 16, seed=3, prefetch=2, augment_on="loader"
    )
    assert batches.loader.num_workers == 0
    epoch = drawn(batches, 1)
    order = torch.cat([i for _, _, i in epoch]).tolist()
    assert order[:6] == [27, 31, 45, 66, 57, 7]  # as before loader workers existed
    augment = build_train_augmentation(True, seed=3 * 1000)
    augment.set_random_seed(3 * 1000 * 1000 + 1)  # (seed, rank 0, epoch 1)
    plain = TrainSet(images, labels, augment, [0.5], [0.25])
    expected = torch.stack([plain[i][0] for i in order])
    assert torch.equal(torch.cat([x for x, _, _ in epoch]), expected)


def drawn_with(mapped, workers: int, augment_on: str, world_size: int = 1, **kwargs):
    images, labels = mapped
    return train_batches(
        images, labels, True, [0.5], [0.25], 16, seed=3, rank=world_size - 1,
        world_size=world_size, workers=workers, augment_on=augment_on, **kwargs,
    )  # fmt: skip


@pytest.mark.timeout(120)
@pytest.mark.parametrize("world_size", [1, 2])
def test_worker_batches_do_not_depend_on_the_number_of_workers(mapped, world_size):
    """The loader path: per-sample seeds in loader processes, other views than in process."""
    one, two = (drawn_with(mapped, n, "loader", world_size) for n in (1, 2))
    assert two.loader.num_workers == 2 and two.loader.persistent_workers
    first = {epoch: drawn(one, epoch) for epoch in (0, 1)}
    for epoch in (0, 1, 0, 1):  # persistent workers, re-drawn: the same batches
        assert same(drawn(two, epoch), first[epoch])
    assert not same(first[0], first[1])
    in_process = drawn_with(mapped, 0, "loader", world_size)
    assert not same(drawn(in_process, 0), first[0])  # other views: the cache key says so


@pytest.mark.timeout(120)
@pytest.mark.parametrize("world_size", [1, 2])
def test_device_views_are_the_same_for_0_1_and_2_loader_workers(mapped, world_size):
    """The device path: 0 (in process, a batch ahead in a thread), 1 and 2 loader processes
    draw the same batches, epoch after epoch and again."""
    batches = {n: drawn_with(mapped, n, "device", world_size, prefetch=2) for n in (0, 1, 2)}
    assert batches[2].loader.num_workers == 2 and batches[2].loader.persistent_workers
    first = {epoch: drawn(batches[0], epoch) for epoch in (0, 1)}
    assert first[0][0][0].dtype == torch.float32 and first[0][0][1].dtype == torch.int64
    for n in (1, 2):
        for epoch in (0, 1, 0):
            assert same(drawn(batches[n], epoch), first[epoch])
    assert not same(first[0], first[1])
    assert not same(drawn(drawn_with(mapped, 0, "loader", world_size), 0), first[0])


def test_a_restarted_run_draws_the_same_views(mapped):
    """A run resumed at epoch 2 in a fresh process (fresh batches) sees epoch 2's views."""
    before = drawn_with(mapped, 0, "device")
    seen = {epoch: drawn(before, epoch) for epoch in range(3)}
    restarted = drawn_with(mapped, 0, "device")
    assert same(drawn(restarted, 2), seen[2])
    assert same(drawn(restarted, 0), seen[0])


def test_uint8_batches_finished_on_the_device_are_the_cpu_views(mapped):
    """What a GPU gets (uint8 batches, finished by the torch back end after the copy), run
    here on the CPU: the CPU's own views (the OpenCV back end) to rounding, batch for batch."""
    cpu = drawn_with(mapped, 0, "device")
    gpu = drawn_with(mapped, 0, "device", device="cuda")  # nothing touches CUDA before .epoch
    stage = gpu.on_device.augment
    assert gpu.on_device.device.type == "cuda" and stage.steps and cpu.on_device is None
    stage.backend = "torch"
    for (xa, ya, ia), (xb, yb, ib) in zip(cpu.epoch(1), gpu.loaded(1), strict=True):
        assert xb.dtype == torch.uint8 and xb.shape == (16, 16, 16, 1)
        assert torch.equal(ia, ib) and torch.equal(ya, yb)
        finished, _ = stage(xb, ib, 1)
        assert (finished - xa).abs().mean() * 0.25 * 255 < 0.5  # grey levels


def test_an_epoch_cut_short_on_the_gpu_stage_stops_the_prefetch_thread(mapped):
    gpu = drawn_with(mapped, 0, "device", device="cuda", prefetch=2)
    stage = DeviceStage(gpu.on_device.augment, torch.device("cpu"), masks=False)
    stream = stage(gpu.loaded(0), 0)  # the GPU's last stage, on the CPU here
    x, _, _ = next(stream)
    assert x.dtype == torch.float32 and x.shape == (16, 1, 16, 16)
    stream.close()
    assert not [t for t in threading.enumerate() if t.name == "kdray-prefetch"]


@pytest.mark.parametrize("augment_on", ["device", "loader"])
def test_an_epoch_cut_short_does_not_change_the_next(mapped, augment_on):
    batches = drawn_with(mapped, 2, augment_on)
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
    batch_set = pickle.loads(pickle.dumps(BatchSet(images, labels, None, [0.5], [0.25], 3)))
    assert isinstance(batch_set.images, np.memmap)


def with_train(job, **settings):
    return job.model_copy(update={"train": job.train.model_copy(update=settings)})


@pytest.mark.timeout(180)
@pytest.mark.parametrize("augment_on", ["device", "loader"])
def test_the_cache_replays_the_views_students_draw(tmp_path, augment_on):
    """The teacher replays with 2 loader workers; a student drawing with another worker count
    (on the device path: none) sees the views the cache holds, position by position, every
    epoch; the cache's key names the path and, on the device path, its back end."""
    raw = tiny_job_dict(tmp_path)
    raw["train"] |= {"loader_workers": 2, "batch_size": 32, "augment_on": augment_on}
    job = parse_job(raw)
    info = prepare_data(job.data, tmp_path / "data")
    torch.manual_seed(0)
    teacher = create_model("test_resnet", info.num_classes, info.channels).eval()
    path = soft_labels.build(teacher, job, 5, info, "cpu", tmp_path)
    cache = np.load(path)
    key = soft_labels.cache_key(job, 5, info)
    in_process = soft_labels.cache_key(with_train(job, loader_workers=0), 5, info)
    if augment_on == "loader":
        assert key["views"] == "per-sample seeds" and "views" not in in_process
    else:
        assert key == in_process and "(opencv)" in key["views"]
        assert soft_labels.cache_key(job, 5, info, device="cuda") != key  # torch back end
        assert soft_labels.load(tmp_path, key) is not None
    images, labels = load_split(info.path, "train")
    student = train_batches(
        images, labels, job.train.augment, info.mean, info.std, 32, 5,
        workers=1 if augment_on == "loader" else 0, augment_on=augment_on,
    )  # fmt: skip
    for epoch in range(job.train.epochs):
        x = torch.cat([x for x, _, _ in student.epoch(epoch)])
        with torch.no_grad():
            online = teacher(x)
        cached = torch.from_numpy(cache[epoch, 0, : len(x)].astype(np.float32))
        assert torch.allclose(cached, online, rtol=2e-3, atol=2e-3)
    assert not np.allclose(cache[0], cache[1])


def test_where_augmentation_runs_leaves_run_ids_alone(tmp_path):
    raw = tiny_job_dict(tmp_path)
    job = parse_job(raw)
    assert job.train.augment_on == "device"  # the default
    loader = with_train(job, augment_on="loader")
    assert list(make_plan(job).runs) == list(make_plan(loader).runs)
    raw["train"]["augment_on"] = "gpu"
    with pytest.raises(JobError, match="augment_on"):
        parse_job(raw)


def test_loader_workers_is_a_validated_train_setting(tmp_path):
    raw = tiny_job_dict(tmp_path)
    assert parse_job(raw).train.loader_workers == 0  # the in-process path by default
    raw["train"]["loader_workers"] = -1
    with pytest.raises(JobError, match="loader_workers"):
        parse_job(raw)


def test_an_experiment_folder_from_before_the_device_path_keeps_its_views(tmp_path):
    import json

    from kdray.spec.load import parse_job
    from kdray.store.experiment import Experiment, ExperimentError
    from tests.conftest import tiny_job_dict

    job = parse_job(tiny_job_dict(tmp_path))
    exp = Experiment.create(job)
    saved = json.loads((exp.root / "job.json").read_text())
    del saved["train"]["augment_on"]  # as an older kdray wrote it
    (exp.root / "job.json").write_text(json.dumps(saved))
    assert exp.job().train.augment_on == "loader"  # `kdray resume` goes on as it began
    exp.run(next(iter(exp.plan().runs))).start_attempt()  # the folder has started runs
    with pytest.raises(ExperimentError, match=r"different job named 'tiny' \(train.augment_on "
                       r'"loader" -> "device"\): resume it'):  # fmt: skip
        Experiment.create(job)  # the job file again, now with the device path: said, not mixed


def test_a_changed_job_names_the_fields_that_train_other_runs(tmp_path):
    from kdray.spec.load import parse_job
    from kdray.store.experiment import training_changes
    from tests.conftest import tiny_job_dict

    raw = tiny_job_dict(tmp_path)
    old = parse_job(raw)
    raw["train"] = {**raw["train"], "epochs": 7, "lr": 0.5, "batch_size": 4, "momentum": 0.5}
    raw["seeds"], raw["faults"] = [0, 1], {"trial_retries": 5}  # retries: not a change
    said = training_changes(old, parse_job(raw), limit=3)
    assert said == (f"seeds [0] -> [0, 1], train.batch_size {old.train.batch_size} -> 4, "
                    f"train.epochs {old.train.epochs} -> 7 and 2 more")  # fmt: skip
