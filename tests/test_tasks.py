"""The task contract: single-label and multi-label losses, KD distributions and metrics, each
against an independent naive formula; which methods a task admits."""

from __future__ import annotations

import math
import typing

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdray.data.base import DataConfigBase
from kdray.methods import METHODS, Outputs, Shapes
from kdray.spec.job import JobError
from kdray.spec.load import parse_job
from kdray.tasks import DEFAULT_TASK, UNLABELLED, get_task, task_names

SINGLE, MULTI = get_task("single_label"), get_task("multi_label")


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def naive_bernoulli_kd(z_s, teachers, temperature) -> float:
    """Per label: KL(Bernoulli(mean of the teachers' sigma(z_t/T)) || Bernoulli(sigma(z_s/T))),
    averaged over images and labels, times T^2; written with plain loops."""
    total, count = 0.0, 0
    for i in range(len(z_s)):
        for j in range(len(z_s[i])):
            p = sum(sigmoid(t[i][j] / temperature) for t in teachers) / len(teachers)
            q = sigmoid(z_s[i][j] / temperature)
            total += p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
            count += 1
    return total / count * temperature**2


def naive_masked_bce(z, y, weights=None) -> float:
    """Binary cross-entropy over the known labels (y != -1), each weighted by its label."""
    total, norm = 0.0, 0.0
    for i in range(len(z)):
        for j in range(len(z[i])):
            if y[i][j] == UNLABELLED:
                continue
            p = sigmoid(z[i][j])
            w = 1.0 if weights is None else weights[j]
            total += -w * (y[i][j] * math.log(p) + (1 - y[i][j]) * math.log(1 - p))
            norm += w
    return total / norm


def multi_label_kd(**params):
    cls = METHODS["kd"]
    counts = params.pop("counts", (3, 1, 2))
    shapes = Shapes(num_classes=3, total_epochs=1, class_counts=counts, task="multi_label")
    return cls(cls.Params(**params), shapes)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    z_s = torch.randn(4, 3, generator=g) * 2
    teachers = [torch.randn(4, 3, generator=g) * 2 for _ in range(2)]
    y = torch.tensor([[1, 0, UNLABELLED], [0, 0, 1], [1, 1, 0], [UNLABELLED, 0, 1]])
    return z_s, teachers, y


@pytest.mark.parametrize("n_teachers", [1, 2])
def test_multi_label_kd_is_per_label_bernoulli_kd_plus_masked_bce(n_teachers):
    z_s, teachers, y = batch()
    teachers = teachers[:n_teachers]
    method = multi_label_kd(temperature=3.0, alpha=0.7)
    terms = method(Outputs(z_s), [Outputs(t) for t in teachers], y, epoch=0.0)
    kd = naive_bernoulli_kd(z_s.tolist(), [t.tolist() for t in teachers], 3.0)
    bce = naive_masked_bce(z_s.tolist(), y.tolist())
    assert terms["kd"].item() == pytest.approx(kd, rel=1e-5)
    assert terms["bce"].item() == pytest.approx(bce, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(0.3 * bce + 0.7 * kd, rel=1e-5)


def test_class_balanced_multi_label_kd_weighs_each_label_by_its_positives():
    z_s, teachers, y = batch(1)
    counts = (4, 1, 2)  # positives per label
    method = multi_label_kd(temperature=2.0, alpha=0.5, class_weights="inverse", counts=counts)
    terms = method(Outputs(z_s), [Outputs(teachers[0])], y, epoch=0.0)
    raw = [1 / c for c in counts]
    weights = [w * len(counts) / sum(raw) for w in raw]
    assert terms["bce"].item() == pytest.approx(naive_masked_bce(z_s.tolist(), y.tolist(), weights))
    per = []  # each label's Bernoulli KL, weighted, over images and labels
    for i in range(4):
        for j in range(3):
            p, q = sigmoid(teachers[0][i, j].item() / 2), sigmoid(z_s[i, j].item() / 2)
            kl = p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
            per.append((weights[j] * kl, weights[j]))
    kd = sum(a for a, _ in per) / sum(b for _, b in per) * 4
    assert terms["kd"].item() == pytest.approx(kd, rel=1e-5)


def test_a_batch_without_a_known_label_trains_nothing_and_stays_finite():
    for task, y in ((SINGLE, torch.full((3,), UNLABELLED)), (MULTI, torch.full((3, 2), -1))):
        z = torch.randn(3, 2, requires_grad=True)
        loss = task.supervised_loss(z, y)
        loss.backward()
        assert loss.item() == 0.0 and torch.equal(z.grad, torch.zeros_like(z))


def test_single_label_loss_is_torch_cross_entropy_bit_for_bit():
    z, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    assert torch.equal(SINGLE.supervised_loss(z, y), F.cross_entropy(z, y))
    y[2] = UNLABELLED  # a pool image: cross-entropy over the others
    keep = y != UNLABELLED
    assert torch.allclose(SINGLE.supervised_loss(z, y), F.cross_entropy(z[keep], y[keep]))


def test_multi_label_metrics_leave_out_and_name_a_label_with_one_class():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (40, 3))
    y[:, 2] = 0  # no positive in this split
    y[0, 0] = UNLABELLED  # unknown: left out of label 0's scores
    probs = np.clip(y * 0.6 + rng.random((40, 3)) * 0.4, 0, 1)
    metrics = MULTI.metrics(probs, y)
    report = MULTI.report(probs, y, ["a", "b", "none"])
    assert report["left_out"] == ["none"]
    from sklearn.metrics import average_precision_score, roc_auc_score

    known = y[:, 0] != UNLABELLED
    auc = [roc_auc_score(y[known, 0], probs[known, 0]), roc_auc_score(y[:, 1], probs[:, 1])]
    ap = [
        average_precision_score(y[known, 0], probs[known, 0]),
        average_precision_score(y[:, 1], probs[:, 1]),
    ]
    assert metrics["auroc"] == pytest.approx(np.mean(auc))
    assert metrics["map"] == pytest.approx(np.mean(ap))
    assert report["per_label"][2]["auroc"] is None and report["per_label"][2]["positives"] == 0
    assert MULTI.primary == "auroc" and MULTI.primary_score(probs, y) == metrics["auroc"]


def test_a_split_where_no_label_has_both_classes_scores_none_not_a_crash():
    y = np.zeros((5, 2), dtype=np.int64)
    metrics = MULTI.metrics(np.full((5, 2), 0.3), y)
    assert metrics["auroc"] is None and metrics["map"] is None
    assert math.isnan(MULTI.primary_score(np.full((5, 2), 0.3), y))


def test_the_tasks_a_job_may_name_are_the_registered_ones():
    field = DataConfigBase.model_fields["task_type"].annotation
    literal = next(a for a in typing.get_args(field) if a is not type(None))
    assert set(typing.get_args(literal)) == set(task_names()) and DEFAULT_TASK in task_names()


def chest_job(method: dict, **extra) -> dict:
    return {
        "name": "chest",
        "data": {"kind": "medmnist", "name": "chestmnist"},
        "studies": {"s": {"teachers": ["resnet18"], "students": ["resnet10t"], "method": method}},
        **extra,
    }


def test_dkd_on_multi_label_data_is_refused_in_one_line():
    with pytest.raises(JobError) as err:
        parse_job(chest_job({"name": "dkd"}))
    (line,) = err.value.problems
    assert line.startswith("studies.s.method: dkd is defined for single-label data")
    assert "multi-label" in line and "'kd'" in line


def test_multi_label_data_refuses_a_per_class_budget_and_admits_kd():
    parse_job(chest_job({"name": "kd"}))  # no error
    with pytest.raises(JobError) as err:
        parse_job(chest_job({"name": "kd"}, labelled={"per_class": [5]}))
    assert err.value.problems == [
        "labelled.per_class: a multi-label image has no one class to count it under; "
        "give labelled.fraction instead"
    ]


def test_each_method_declares_tasks_that_exist():
    for method in METHODS.values():
        assert method.tasks and set(method.tasks) <= set(task_names()), method.name
    assert "multi_label" not in METHODS["dkd"].tasks
    assert {"kd", "at", "fitnets", "feature_l1"} <= {
        n for n, m in METHODS.items() if "multi_label" in m.tasks
    }


def test_a_vit_is_built_for_the_data_s_image_size_and_rebuilt_so_from_its_file(tmp_path):
    from kdray.store.model_file import load_model, save_model

    task = get_task("single_label")
    vit = task.create_model("vit_tiny_patch16_224", 3, 1, image_size=32)
    assert vit.train()(torch.zeros(2, 1, 32, 32)).shape == (2, 3)
    save_model(tmp_path / "model.pt", vit, model="vit_tiny_patch16_224", task="single_label",
               num_classes=3, in_chans=1, image_size=32, rank=2)  # fmt: skip
    loaded, meta = load_model(tmp_path / "model.pt")
    x = torch.rand(1, 1, 32, 32)
    assert torch.equal(loaded(x), vit.eval()(x)) and meta["image_size"] == 32
    native = task.create_model("vit_tiny_patch16_224", 3, 1, image_size=224)
    assert native.patch_embed.img_size == (224, 224)  # at its own size: timm's default, as before
