"""Few labels: the labelled subset, the unlabelled pool, and how budgets enter the plan."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kdray.data.budgets
from kdray.data import prepare_data
from kdray.data.budgets import (
    UNLABELLED,
    budget_label,
    class_counts,
    labelled_indices,
    training_arrays,
)
from kdray.spec.fit import label_budget_warnings
from kdray.spec.job import JobError
from kdray.spec.load import parse_job
from kdray.spec.plan import make_plan
from kdray.train.session import band_stop, build_session, train_epoch
from tests.conftest import tiny_job_dict

SKEWED = np.array([0] * 70 + [1] * 20 + [2] * 10)


def test_a_fraction_keeps_that_share_of_every_class():
    keep = labelled_indices(SKEWED, {"fraction": 0.1}, seed=0)
    assert np.bincount(SKEWED[keep]).tolist() == [7, 2, 1]
    assert np.all(np.diff(keep) > 0)  # sorted, no repeats


def test_a_count_per_class_keeps_at_most_the_class():
    keep = labelled_indices(SKEWED, {"per_class": 15}, seed=0)
    assert np.bincount(SKEWED[keep]).tolist() == [15, 15, 10]


def test_the_same_budget_and_seed_pick_the_same_images_and_another_seed_others():
    a = labelled_indices(SKEWED, {"fraction": 0.2}, seed=3)
    assert np.array_equal(a, labelled_indices(SKEWED.copy(), {"fraction": 0.2}, seed=3))
    assert not np.array_equal(a, labelled_indices(SKEWED, {"fraction": 0.2}, seed=4))
    assert np.array_equal(labelled_indices(SKEWED, None, 0), np.arange(len(SKEWED)))


def test_budget_labels():
    assert budget_label({"fraction": 0.1}) == "10%"
    assert budget_label({"per_class": 20}) == "20 per class"
    assert budget_label(None) == "all"


def semi_job(tmp_path, **study):
    raw = tiny_job_dict(tmp_path)
    raw["labelled"] = {"fraction": [0.25, 1.0]}
    raw["studies"]["mt"] = {"students": ["test_resnet"], "unlabelled": True,
                            "method": {"name": "mean_teacher"}, **study}  # fmt: skip
    raw["studies"]["pool"] = {"teachers": ["resnet10t"], "students": ["test_resnet"],
                              "unlabelled": True}  # fmt: skip
    return parse_job(raw)


def test_budgets_multiply_the_grid_and_a_fraction_of_one_is_the_full_label_run(tmp_path):
    job = semi_job(tmp_path)
    plan = make_plan(job)
    full = make_plan(parse_job(tiny_job_dict(tmp_path)))
    # every label: the same runs, the same ids, as a job without budgets
    assert set(full.runs) <= set(plan.runs)
    few = [r for r in plan.runs.values() if r.labels == {"fraction": 0.25}]
    teachers = [r for r in few if r.stage == "teacher"]
    assert [t.model for t in teachers] == ["resnet10t"] and "labels25pct" in teachers[0].run_id
    pool_kd = next(r for r in few if r.method == "kd" and r.unlabelled)
    plain_kd = next(r for r in few if r.method == "kd" and not r.unlabelled)
    assert "labels25pct-pool-" in pool_kd.run_id and "-pool-" not in plain_kd.run_id
    assert teachers[0].soft_labels and teachers[0].soft_labels_pool  # both students cached
    assert plain_kd.teacher_runs == pool_kd.teacher_runs
    baselines = [r for r in few if "baseline" in r.roles]
    assert [b.model for b in baselines] == ["test_resnet"]
    # at 100% there is no pool: the pool study's KD run is the normal study's KD run
    full_kd = [r for r in plan.runs.values() if r.method == "kd" and r.labels is None]
    assert len(full_kd) == 1 and {"kd:normal", "kd:pool"} <= set(full_kd[0].roles)
    assert len([r for r in plan.runs.values() if r.method == "mean_teacher"]) == 2


def test_a_pool_needs_a_budget_and_a_method_that_trains_without_labels(tmp_path):
    raw = tiny_job_dict(tmp_path)
    raw["studies"]["pool"] = {"teachers": ["resnet10t"], "students": ["test_resnet"],
                              "unlabelled": True, "method": {"name": "dkd"}}  # fmt: skip
    with pytest.raises(JobError) as error:
        parse_job(raw)
    text = str(error.value)
    assert "studies.pool.unlabelled: method dkd needs a label for every image" in text
    assert "no unlabelled pool; add e.g. `labelled:" in text


@pytest.mark.parametrize(
    "labelled, message",
    [
        ({"fraction": [0.1], "per_class": [5]}, "not both"),
        ({"fraction": [0.0]}, "fractions are in (0, 1]"),
        ({"per_class": [5, 5]}, "distinct"),
    ],
)
def test_bad_budgets_are_refused_naming_the_field(tmp_path, labelled, message):
    raw = tiny_job_dict(tmp_path, labelled=labelled)
    with pytest.raises(JobError, match="labelled") as error:
        parse_job(raw)
    assert message in str(error.value)


def test_budgets_labelled_alike_are_refused_naming_the_field(tmp_path):
    """0.5 and 0.50000001 are different budgets (10 and 11 of 20 images) that the tables
    would show as one 50% cell, averaged as if they were seeds."""
    raw = tiny_job_dict(tmp_path, labelled={"fraction": [0.5, 0.50000001]})
    with pytest.raises(JobError) as error:
        parse_job(raw)
    text = str(error.value)
    assert "labelled.fraction: 0.5 and 0.50000001 are both labelled 50%" in text
    assert "\n" not in text.strip()


def test_budgets_the_data_cannot_tell_apart_are_warned_of(tmp_path):
    """With 10 images a class, 12 per class keeps every label, and so does 10: the grid would
    train the same budget twice, under two labels."""
    labels = np.array([0] * 10 + [1] * 10)
    job = parse_job(tiny_job_dict(tmp_path, labelled={"per_class": [5, 10, 12]}))
    warnings = label_budget_warnings(job, labels)
    assert warnings == [
        "labelled.per_class: 10 keeps every training label (no class has more than 10 images), "
        "yet the tables say 10 per class; give a count below 10",
        "labelled.per_class: 12 keeps every training label (no class has more than 10 images), "
        "yet the tables say 12 per class; give a count below 10",
        "labelled.per_class: 10 and 12 keep the same 20 labelled training images, so the grid "
        "trains that budget twice; drop one",
    ]
    job = parse_job(tiny_job_dict(tmp_path, labelled={"fraction": [0.45, 0.5, 1.0]}))
    assert label_budget_warnings(job, labels) == [
        "labelled.fraction: 0.45 and 0.5 keep the same 10 labelled training images, so the "
        "grid trains that budget twice; drop one"
    ]
    assert label_budget_warnings(job, np.array([0] * 100 + [1] * 100)) == []
    job = parse_job(tiny_job_dict(tmp_path, labelled={"fraction": [0.5, 0.99]}))
    assert label_budget_warnings(job, labels) == [  # ceil(0.99 * 10) is every image
        "labelled.fraction: 0.99 keeps every training label (each class's share rounds up to "
        "all its images), yet the tables say 99%; give a smaller fraction"
    ]


def test_a_pool_run_trains_without_reading_a_pool_label(tmp_path, monkeypatch):
    """The pool's labels replaced by a class that does not exist: training still runs, and
    ends with exactly the weights of a run on the true labels."""
    job = semi_job(tmp_path)
    spec = next(r for r in make_plan(job).runs.values()
                if r.method == "mean_teacher" and r.labels)  # fmt: skip
    data = prepare_data(job.data, tmp_path / "data")
    labels_file = f"{data.path}/train_labels.npy"
    labels = np.load(labels_file)
    keep = labelled_indices(labels, spec.labels, spec.seed)
    images, targets = training_arrays(data, spec.labels, spec.seed, pool=True)
    assert len(images) == len(labels) and np.all(targets[keep] == labels[keep])
    assert np.all(np.delete(targets, keep) == UNLABELLED)

    def trained_weights():
        session = build_session(job, spec, data, [], torch.device("cpu"))
        train_epoch(session, 0, band_stop(session))
        return {k: v.clone() for k, v in session.core.state_dict().items()}

    clean = trained_weights()
    corrupt = labels.copy()
    corrupt[np.setdiff1d(np.arange(len(labels)), keep)] = 99  # no such class
    np.save(labels_file, corrupt)
    # the labelled images were chosen from the true labels; keep that choice
    monkeypatch.setattr(kdray.data.budgets, "labelled_indices", lambda *args: keep)
    corrupted = trained_weights()
    assert clean.keys() == corrupted.keys()
    assert all(torch.equal(clean[k], corrupted[k]) for k in clean)


def test_a_labelled_only_run_cycles_its_images_to_a_full_epoch(tmp_path):
    job = semi_job(tmp_path)
    data = prepare_data(job.data, tmp_path / "data")
    images, targets = training_arrays(data, {"fraction": 0.25}, 0)
    all_images, labels = training_arrays(data, None, 0)
    keep = labelled_indices(labels, {"fraction": 0.25}, 0)
    assert len(targets) == len(labels)  # as many steps as a run on every label
    drawn = np.unique(images.reshape(len(images), -1), axis=0)
    kept = np.unique(all_images[keep].reshape(len(keep), -1), axis=0)
    assert np.array_equal(drawn, kept)  # only the kept images, each of them
    assert np.array_equal(targets[: len(keep)], labels[keep])
    assert np.array_equal(np.bincount(labels[keep]), class_counts(data, {"fraction": 0.25}, 0))


def test_a_mean_teacher_resumed_from_its_checkpoint_ends_where_an_uninterrupted_run_ends(
    tmp_path,
):
    """The checkpoint the worker writes holds the moving average and its step count: a run
    rebuilt from scratch and restored from epoch 1's checkpoint trains epoch 2 to exactly the
    weights (student and moving average) of the run that never stopped."""
    import io

    from kdray.train.run_loop import checkpoint_state, load_state

    job = semi_job(tmp_path)
    spec = next(r for r in make_plan(job).runs.values()
                if r.method == "mean_teacher" and r.labels)  # fmt: skip
    data = prepare_data(job.data, tmp_path / "data")
    cpu = torch.device("cpu")
    uninterrupted = build_session(job, spec, data, [], cpu)
    train_epoch(uninterrupted, 0, band_stop(uninterrupted))
    saved = io.BytesIO()
    torch.save(checkpoint_state(uninterrupted, 1, [{"epoch": 1}]), saved)
    train_epoch(uninterrupted, 1, band_stop(uninterrupted))

    resumed = build_session(job, spec, data, [], cpu)  # a fresh worker: fresh weights
    saved.seek(0)
    start, history = load_state(resumed, torch.load(saved, weights_only=True))
    assert (start, history) == (1, [{"epoch": 1}])
    train_epoch(resumed, 1, band_stop(resumed))
    final, expected = resumed.core.state_dict(), uninterrupted.core.state_dict()
    assert any(k.startswith("method.ema.") for k in final) and int(final["method.steps"]) > 0
    for key in expected:
        torch.testing.assert_close(final[key], expected[key], rtol=0, atol=0, msg=key)
