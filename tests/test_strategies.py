import math

import pytest
import torch
import torch.nn.functional as F

from kdray.strategies import STRATEGIES, get_strategy, hinton_kd_loss


def softmax(xs, t):
    exps = [math.exp(x / t) for x in xs]
    return [e / sum(exps) for e in exps]


def test_registry_holds_the_four_strategies_with_their_roles():
    assert {"none", "normal", "reverse", "defective"} <= set(STRATEGIES)
    assert not STRATEGIES["none"].needs_teacher
    assert STRATEGIES["defective"].teacher_stop == "band"
    assert STRATEGIES["normal"].teacher_stop == STRATEGIES["reverse"].teacher_stop == "converged"
    with pytest.raises(KeyError, match="unknown strategy"):
        get_strategy("nope")


def test_hinton_loss_against_a_hand_computed_value():
    student = [[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]]
    teacher = [[1.0, 1.0, 0.0], [0.0, 2.0, 0.0]]
    targets = [0, 1]
    t, alpha = 2.0, 0.75
    ce = sum(-math.log(softmax(s, 1)[y]) for s, y in zip(student, targets, strict=True)) / 2
    kl = 0.0
    for s, te in zip(student, teacher, strict=True):
        p, q = softmax(te, t), softmax(s, t)
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    kl_batchmean = kl / 2
    expected = (1 - alpha) * ce + alpha * t * t * kl_batchmean

    out = hinton_kd_loss(
        torch.tensor(student), torch.tensor(targets), torch.tensor(teacher), t, alpha
    )
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert out["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert out["kd"].item() == pytest.approx(t * t * kl_batchmean, rel=1e-5)

    # Yuan et al.'s element-wise mean: the KL term is K (= 3 classes) times smaller
    mean = hinton_kd_loss(
        torch.tensor(student), torch.tensor(targets), torch.tensor(teacher), t, alpha, "mean"
    )
    assert mean["kd"].item() == pytest.approx(t * t * kl_batchmean / 3, rel=1e-5)


def test_kd_with_a_teacher_equal_to_the_student_has_zero_kd_term():
    logits = torch.randn(4, 5)
    out = get_strategy("normal")(temperature=3.0, alpha=0.5).loss(logits, torch.arange(4), logits)
    assert out["kd"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["loss"].item() == pytest.approx(
        0.5 * F.cross_entropy(logits, torch.arange(4)).item()
    )


def test_no_kd_is_cross_entropy_and_kd_strategies_need_a_teacher():
    logits, y = torch.randn(3, 4), torch.tensor([0, 1, 3])
    assert get_strategy("none")().loss(logits, y)["loss"].item() == pytest.approx(
        F.cross_entropy(logits, y).item()
    )
    with pytest.raises(ValueError, match="teacher"):
        get_strategy("reverse")().loss(logits, y)


def test_kd_gradient_does_not_reach_the_teacher():
    teacher = torch.randn(2, 3, requires_grad=True)
    student = torch.randn(2, 3, requires_grad=True)
    hinton_kd_loss(student, torch.tensor([0, 1]), teacher, 4.0, 0.9)["loss"].backward()
    assert teacher.grad is None and student.grad is not None
