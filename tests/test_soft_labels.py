"""The teacher soft-label cache: exact views, same loss as online KD, built once per teacher."""

import json

import numpy as np
import pytest
import torch

from kdray.data import load_split, prepare_data
from kdray.methods import METHODS, Outputs, Shapes
from kdray.methods.kd import KDParams
from kdray.spec.load import parse_job
from kdray.spec.plan import make_plan
from kdray.store.model_file import load_model
from kdray.train import soft_labels
from kdray.train.batches import train_batches
from tests.conftest import tiny_job_dict
from tests.test_worker import run_local


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("soft")
    raw = tiny_job_dict(tmp_path)
    raw["studies"] = {
        "normal": {"teachers": ["resnet10t"], "students": ["test_resnet", "resnet10t"]}
    }
    raw["baseline"] = False
    job = parse_job(raw)
    plan = make_plan(job)
    data = prepare_data(job.data, tmp_path / "data")
    spec = plan.stage("teacher")[0]
    run_dir, summary = run_local(tmp_path, job, spec, data)
    return tmp_path, job, plan, data, spec, run_dir


def test_cached_logits_are_the_teachers_outputs_on_the_students_views(teacher):
    _, job, _, data, spec, run_dir = teacher
    cache = np.load(run_dir / soft_labels.LOGITS_FILE)
    assert cache.shape == (job.train.epochs, 1, data.counts["train"], data.num_classes)
    model, _ = load_model(run_dir / "model.pt")
    images, labels = load_split(data.path, "train")
    # a student of the same seed draws its batches independently of the teacher's replay
    student = train_batches(
        images, labels, job.train.augment, data.mean, data.std, job.train.batch_size, spec.seed
    )
    kd_loss = METHODS["kd"](
        KDParams(temperature=4.0, alpha=0.9),
        Shapes(num_classes=data.num_classes, total_epochs=job.train.epochs),
    )
    assert job.train.eval_batch_size > 2 * job.train.batch_size  # replayed several batches a call
    for epoch in range(job.train.epochs):
        position = 0
        for x, y, _ in student.epoch(epoch):  # each batch's logits in their place
            with torch.no_grad():
                online = model(x)
            cached = torch.from_numpy(cache[epoch, 0, position : position + len(y)])
            assert torch.allclose(cached.float(), online, rtol=2e-3, atol=2e-3)
            position += len(y)
        assert position == data.counts["train"]
        kd = {
            name: kd_loss(Outputs(online * 0.5), [Outputs(logits)], y, epoch)["loss"].item()
            for name, logits in (("online", online), ("cached", cached))
        }
        assert kd["cached"] == pytest.approx(kd["online"], rel=1e-3)  # the stated tolerance
    # other epochs are other views: the cache is not one view repeated
    assert not np.allclose(cache[0], cache[1])


def test_the_cache_is_built_once_per_teacher_and_read_by_every_student(teacher):
    tmp_path, job, plan, data, spec, run_dir = teacher
    cache_file = run_dir / soft_labels.LOGITS_FILE
    built = cache_file.stat().st_mtime_ns
    assert spec.soft_labels  # its students read cached soft labels: it wrote them
    students = [r for r in plan.stage("student") if r.teacher_runs == [spec.run_id]]
    assert len(students) == 2
    for student in students:
        assert student.teacher_outputs == "cached"
        _, summary = run_local(tmp_path, job, student, data, teacher_dirs=[run_dir])
        assert summary["status"] == "finished" and summary["teacher_outputs"] == "cached"
    assert cache_file.stat().st_mtime_ns == built


def test_students_fall_back_to_the_online_teacher(teacher, tmp_path):
    _, job, plan, data, spec, run_dir = teacher
    key = soft_labels.cache_key(job, spec.seed, data)
    assert soft_labels.load(run_dir, key) is not None
    assert soft_labels.load(run_dir, {**key, "batch_size": 99}) is None  # other views: no cache
    raw = json.loads(job.model_dump_json())
    raw["distill"]["teacher_outputs"] = "online"
    online_job = parse_job(raw)
    online_plan = make_plan(online_job)
    student = next(r for r in online_plan.stage("student") if r.model == "test_resnet")
    assert student.teacher_outputs == "online"
    assert not online_plan.runs[student.teacher_runs[0]].soft_labels  # no cache to build
    _, summary = run_local(tmp_path, online_job, student, data, teacher_dirs=[run_dir])
    assert summary["teacher_outputs"] == "online"


def test_data_parallel_students_find_their_own_ranks_views(teacher, tmp_path):
    """With 2 workers per trial each rank draws its own shard and augmentation; the teacher
    replays both, and rank r's batches at any position match the cache's (epoch, r) rows."""
    _, job, _, data, spec, run_dir = teacher
    raw = json.loads(job.model_dump_json())
    raw["resources"].update(workers_per_trial=2, max_concurrent_trials=1)
    ddp_job = parse_job(raw)
    model, _ = load_model(run_dir / "model.pt")
    soft_labels.build(model, ddp_job, spec.seed, data, "cpu", tmp_path)
    cache = soft_labels.load(tmp_path, soft_labels.cache_key(ddp_job, spec.seed, data))
    assert cache is not None and cache.shape[:3] == (job.train.epochs, 2, data.counts["train"] // 2)
    assert soft_labels.load(tmp_path, soft_labels.cache_key(job, spec.seed, data)) is None
    images, labels = load_split(data.path, "train")
    seen = []
    for rank in (0, 1):
        batches = train_batches(
            images,
            labels,
            job.train.augment,
            data.mean,
            data.std,
            job.train.batch_size,
            spec.seed,
            rank=rank,
            world_size=2,
        )
        position = 0
        for x, y, index in batches.epoch(1):
            with torch.no_grad():
                online = model(x)
            cached = torch.from_numpy(cache[1, rank, position : position + len(y)].astype("f4"))
            assert torch.allclose(cached, online, rtol=2e-3, atol=2e-3)
            position += len(y)
            seen.append(index)
    assert len(torch.cat(seen).unique()) == len(torch.cat(seen))  # the ranks' shards are disjoint
