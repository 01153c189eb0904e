"""Logit methods (Hinton KD, DKD, teacher-free virtual KD) against naive, loop-by-loop maths."""

from __future__ import annotations

import math

import pydantic
import pytest
import torch

from kdray.methods import METHODS, Outputs, Shapes

STUDENT = [[1.0, 2.0, 0.5, -1.0], [0.3, -0.7, 2.2, 0.1], [-1.5, 0.4, 0.0, 1.2]]
TEACHER = [[2.0, 1.0, 0.0, -2.0], [0.0, 0.5, 3.0, -1.0], [1.0, -1.0, 0.5, 2.5]]
TEACHER2 = [[-0.5, 1.5, 0.2, 0.3], [1.0, 1.0, -2.0, 0.0], [0.0, 2.0, -1.0, 1.0]]
TARGETS = [1, 2, 3]


# --- naive maths: plain Python lists and math, no torch ----------------------------------------


def softmax(row: list[float], T: float = 1.0) -> list[float]:
    exps = [math.exp(v / T) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


def cross_entropy(logits: list[list[float]], targets: list[int]) -> float:
    return sum(-math.log(softmax(r)[y]) for r, y in zip(logits, targets, strict=True)) / len(
        targets
    )


def naive_dkd(
    student: list[list[float]], teacher: list[list[float]], targets: list[int], T: float
) -> tuple[float, float]:
    tckd = nckd = 0.0
    for zs, zt, y in zip(student, teacher, targets, strict=True):
        ps, pt = softmax(zs, T), softmax(zt, T)
        tckd += kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
        others = [k for k in range(len(zs)) if k != y]
        pt_nt = [pt[k] / (1 - pt[y]) for k in others]
        ps_nt = [ps[k] / (1 - ps[y]) for k in others]
        nckd += kl(pt_nt, ps_nt)
    n = len(targets)
    return tckd / n * T * T, nckd / n * T * T


def tensors(*rows):
    return [torch.tensor(r, dtype=torch.float32) for r in rows]


def make(name: str, num_classes: int = 4, total_epochs: int = 12, **params):
    cls = METHODS[name]
    return cls(cls.Params(**params), Shapes(num_classes=num_classes, total_epochs=total_epochs))


# --- Hinton KD ---------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["batchmean", "mean"])
def test_kd_matches_naive(reduction):
    T, alpha = 4.0, 0.9
    method = make("kd", temperature=T, alpha=alpha, kl_reduction=reduction)
    s, t = tensors(STUDENT, TEACHER)
    out = method(Outputs(s), [Outputs(t)], torch.tensor(TARGETS), epoch=1.0)

    total = sum(kl(softmax(zt, T), softmax(zs, T)) for zs, zt in zip(STUDENT, TEACHER, strict=True))
    divisor = len(STUDENT) * (4 if reduction == "mean" else 1)
    kd = total / divisor * T * T
    ce = cross_entropy(STUDENT, TARGETS)
    assert out["kd"].item() == pytest.approx(kd, rel=1e-5)
    assert out["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert out["loss"].item() == pytest.approx((1 - alpha) * ce + alpha * kd, rel=1e-5)


def test_kd_ensemble_is_kl_to_mean_of_softened_probabilities():
    T = 2.0
    method = make("kd", temperature=T, alpha=1.0)
    s, t1, t2 = tensors(STUDENT, TEACHER, TEACHER2)
    out = method(Outputs(s), [Outputs(t1), Outputs(t2)], torch.tensor(TARGETS), epoch=1.0)

    total = 0.0
    for zs, za, zb in zip(STUDENT, TEACHER, TEACHER2, strict=True):
        mean = [(a + b) / 2 for a, b in zip(softmax(za, T), softmax(zb, T), strict=True)]
        total += kl(mean, softmax(zs, T))
    assert out["kd"].item() == pytest.approx(total / len(STUDENT) * T * T, rel=1e-5)
    assert out["loss"].item() == pytest.approx(out["kd"].item(), rel=1e-6)


# --- DKD ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("epoch", "factor"), [(0.5, 0.25), (0.0, 0.0), (2.0, 1.0), (7.0, 1.0)])
def test_dkd_matches_naive_with_warmup(epoch, factor):
    T, alpha, beta, ce_weight = 4.0, 1.5, 2.0, 0.7
    method = make(
        "dkd", alpha=alpha, beta=beta, temperature=T, ce_weight=ce_weight, warmup_epochs=2.0
    )
    s, t = tensors(STUDENT, TEACHER)
    out = method(Outputs(s), [Outputs(t)], torch.tensor(TARGETS), epoch=epoch)

    tckd, nckd = naive_dkd(STUDENT, TEACHER, TARGETS, T)
    ce = cross_entropy(STUDENT, TARGETS)
    assert out["tckd"].item() == pytest.approx(tckd, rel=1e-5)
    assert out["nckd"].item() == pytest.approx(nckd, rel=1e-5)
    assert out["ce"].item() == pytest.approx(ce, rel=1e-5)
    expected = ce_weight * ce + factor * (alpha * tckd + beta * nckd)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_dkd_default_warmup_is_a_twelfth_of_the_run():
    method = make("dkd", total_epochs=24)  # default warm-up: 24 / 12 = 2 epochs
    assert method.warmup_factor(0.5) == pytest.approx(0.25)
    assert method.warmup_factor(2.0) == 1.0
    assert method.warmup_factor(100.0) == 1.0
    assert make("dkd", total_epochs=240).warmup_factor(10.0) == pytest.approx(0.5)
    assert make("dkd", warmup_epochs=0.0).warmup_factor(0.0) == 1.0

    s, t = tensors(STUDENT, TEACHER)
    out = method(Outputs(s), [Outputs(t)], torch.tensor(TARGETS), epoch=0.5)
    tckd, nckd = naive_dkd(STUDENT, TEACHER, TARGETS, 4.0)
    expected = cross_entropy(STUDENT, TARGETS) + 0.25 * (1.0 * tckd + 8.0 * nckd)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_dkd_ensemble_uses_mean_of_softened_probabilities():
    T = 3.0
    method = make("dkd", temperature=T, warmup_epochs=0.0)
    s, t1, t2 = tensors(STUDENT, TEACHER, TEACHER2)
    out = method(Outputs(s), [Outputs(t1), Outputs(t2)], torch.tensor(TARGETS), epoch=0.0)

    tckd = nckd = 0.0
    for zs, za, zb, y in zip(STUDENT, TEACHER, TEACHER2, TARGETS, strict=True):
        ps = softmax(zs, T)
        pt = [(a + b) / 2 for a, b in zip(softmax(za, T), softmax(zb, T), strict=True)]
        tckd += kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
        others = [k for k in range(4) if k != y]
        nckd += kl([pt[k] / (1 - pt[y]) for k in others], [ps[k] / (1 - ps[y]) for k in others])
    assert out["tckd"].item() == pytest.approx(tckd / 3 * T * T, rel=1e-5)
    assert out["nckd"].item() == pytest.approx(nckd / 3 * T * T, rel=1e-5)


def test_dkd_two_classes_warns_and_nckd_is_zero():
    params = METHODS["dkd"].Params()
    with pytest.warns(UserWarning, match="identically 0"):
        method = make("dkd", num_classes=2)
    messages = METHODS["dkd"].warnings(params, 2)
    assert len(messages) == 1 and "NCKD" in messages[0] and "beta" in messages[0]
    assert METHODS["dkd"].warnings(params, 4) == []
    assert METHODS["dkd"].inert_params(2) == ("beta",) and METHODS["dkd"].inert_params(4) == ()

    student, teacher, targets = [[0.3, -1.2], [2.0, 0.5]], [[1.0, 0.0], [-0.5, 1.5]], [0, 1]
    s, t = tensors(student, teacher)
    out = method(Outputs(s), [Outputs(t)], torch.tensor(targets), epoch=100.0)
    assert out["nckd"].item() == 0.0
    tckd, _ = naive_dkd(student, teacher, targets, 4.0)
    assert out["tckd"].item() == pytest.approx(tckd, rel=1e-5)
    expected = cross_entropy(student, targets) + tckd  # alpha 1, factor 1, beta irrelevant
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_dkd_stays_finite_on_confident_logits():
    method = make("dkd", warmup_epochs=0.0)
    s = torch.tensor([[60.0, -60.0, 0.0, 5.0]], requires_grad=True)
    t = torch.tensor([[-80.0, 90.0, 0.0, 1.0]])
    out = method(Outputs(s), [Outputs(t)], torch.tensor([1]), epoch=1.0)
    out["loss"].backward()
    assert all(torch.isfinite(v).all() for v in out.values())
    assert torch.isfinite(s.grad).all()


# --- teacher-free virtual teacher --------------------------------------------------------------


def test_tfkd_virtual_matches_naive_without_teachers():
    a, alpha, T, m = 0.9, 0.3, 20.0, 100.0
    method = make("tfkd_virtual", correct_prob=a, alpha=alpha, temperature=T, multiplier=m)
    assert method.needs == "none"
    (s,) = tensors(STUDENT)
    out = method(Outputs(s), [], torch.tensor(TARGETS), epoch=1.0)

    K, total = 4, 0.0
    for zs, y in zip(STUDENT, TARGETS, strict=True):
        q = [a if k == y else (1 - a) / (K - 1) for k in range(K)]
        total += kl(softmax(q, T), softmax(zs))  # q softened again; student not divided by T
    kd = m * total / (len(STUDENT) * K)
    ce = cross_entropy(STUDENT, TARGETS)
    assert out["kd"].item() == pytest.approx(kd, rel=1e-5)
    assert out["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert out["loss"].item() == pytest.approx((1 - alpha) * ce + alpha * kd, rel=1e-5)


def test_tfkd_virtual_defaults_are_the_papers():
    p = METHODS["tfkd_virtual"].Params()
    assert (p.correct_prob, p.alpha, p.temperature, p.multiplier) == (0.99, 0.1, 20.0, 100.0)
    with pytest.raises(pydantic.ValidationError):
        METHODS["tfkd_virtual"].Params(correct_prob=1.0)


# --- gradients and registry --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["kd", "dkd"])
def test_gradients_reach_student_not_teacher(name):
    s, t = tensors(STUDENT, TEACHER)
    s.requires_grad_(True)
    t.requires_grad_(True)
    method = make(name)
    out = method(Outputs(s), [Outputs(t)], torch.tensor(TARGETS), epoch=5.0)
    out["loss"].backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_registry_has_logit_methods_and_validates():
    assert {"kd", "dkd", "tfkd_virtual"} <= set(METHODS)
    assert METHODS["dkd"].needs == "logits"
    assert METHODS["tfkd_virtual"].needs == "none"
    with pytest.raises(pydantic.ValidationError):
        METHODS["dkd"].Params(beta=-1)
    with pytest.raises(pydantic.ValidationError):
        METHODS["dkd"].Params(temperature=0)
    p = METHODS["dkd"].Params()
    assert (p.alpha, p.beta, p.temperature, p.ce_weight, p.warmup_epochs) == (1, 8, 4, 1, None)


def test_a_search_over_a_parameter_its_method_has_no_use_for_here_is_warned_of(tmp_path):
    """DKD's beta weighs NCKD, which is 0 with two classes: searching it trains alike."""
    from kdray.spec.describe import method_warnings
    from kdray.spec.load import parse_job
    from tests.conftest import tiny_job_dict

    space = {"beta": {"uniform": [1, 8]}, "alpha": {"uniform": [0.5, 2]}}
    studies = {
        "tuned": {
            "teachers": ["resnet10t"], "students": ["test_resnet"],
            "method": {"name": "dkd"}, "search": {"space": space, "samples": 4},
        }
    }  # fmt: skip
    job = parse_job(tiny_job_dict(tmp_path, studies=studies))
    two = [w for w in method_warnings(job, 2) if ".search.space." in w]
    assert len(two) == 1 and two[0].startswith("studies.tuned.search.space.beta: dkd has no use")
    assert [w for w in method_warnings(job, 3) if ".search.space." in w] == []
