"""Few-label methods: mean teacher's moving average and consistency, class-balanced KD, and
KD on images without a label."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdray.methods import UNLABELLED, Outputs, Shapes, class_weights, get_method
from kdray.methods.mean_teacher import perturbed_view, rampup, shifted
from kdray.train.distiller import Distiller


def mean_teacher(student: nn.Module, **params):
    cls = get_method("mean_teacher")
    method = cls(cls.Params(**params), Shapes(num_classes=3, total_epochs=10, seed=7))
    return Distiller(student, method, [], method.task), method


def test_the_moving_average_matches_a_hand_computation():
    student = nn.Linear(4, 3)
    core, method = mean_teacher(student, rampup_decay=0.9, ema_decay=0.99, rampup_epochs=2)
    ema0 = {k: v.clone() for k, v in method.ema.module.state_dict().items()}
    expected = ema0
    for step, epoch in [(1, 0.5), (2, 1.0), (3, 1.5), (4, 2.5), (5, 3.0)]:
        with torch.no_grad():
            for p in student.parameters():
                p.add_(torch.randn_like(p))
        core.method.after_step(student, epoch)
        decay = min(0.9 if epoch < 2 else 0.99, 1 - 1 / (step + 1))
        now = student.state_dict()
        expected = {k: decay * expected[k] + (1 - decay) * now[k] for k in expected}
        got = method.ema.module.state_dict()
        for k in expected:
            torch.testing.assert_close(got[k], expected[k])
    assert int(method.steps) == 5


def test_the_moving_average_is_in_the_checkpoint_and_never_trained():
    core, method = mean_teacher(nn.Linear(4, 3), translate=0)  # flat inputs: noise only
    keys = core.state_dict().keys()
    assert {"method.ema.module.weight", "method.ema.module.bias", "method.steps"} <= set(keys)
    assert all(not p.requires_grad for p in method.ema.parameters())
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, UNLABELLED, UNLABELLED, 1])
    _, losses = core(x, y, None, epoch=10.0)
    losses["loss"].backward()
    assert all(p.grad is None for p in method.ema.parameters())
    assert core.student.weight.grad is not None


def test_the_consistency_term_is_the_ramped_mse_of_softmax_outputs():
    core, method = mean_teacher(nn.Linear(4, 3), consistency=20.0, rampup_epochs=4)
    student_logits = torch.randn(5, 3)
    teacher_logits = torch.randn(5, 3)
    targets = torch.tensor([0, UNLABELLED, 2, UNLABELLED, 1])
    terms = method(Outputs(student_logits), [Outputs(teacher_logits)], targets, epoch=1.0)
    mse = ((student_logits.softmax(1) - teacher_logits.softmax(1)) ** 2).mean()
    labelled = targets != UNLABELLED
    ce = F.cross_entropy(student_logits[labelled], targets[labelled])
    weight = 20.0 * math.exp(-5 * (1 - 1 / 4) ** 2)
    torch.testing.assert_close(terms["consistency"], mse)
    torch.testing.assert_close(terms["ce"], ce)
    torch.testing.assert_close(terms["loss"], ce + weight * mse)
    assert rampup(0.0, 4) == pytest.approx(math.exp(-5)) and rampup(9, 4) == 1.0


def test_the_teachers_view_is_shifted_and_noisy_and_reproducible():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    moved, _ = perturbed_view(x, 2, 0.0, torch.Generator().manual_seed(1))
    assert not torch.equal(moved, x)
    assert set(moved.unique().tolist()) <= set(x.unique().tolist())  # whole-pixel shifts
    a, _ = perturbed_view(x, 2, 0.15, torch.Generator().manual_seed(3))
    b, _ = perturbed_view(x, 2, 0.15, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_a_volume_is_shifted_by_whole_voxels_along_each_of_its_three_axes():
    x = torch.zeros(3, 1, 8, 10, 12)
    x[:, 0, 4, 5, 6] = 1.0  # one bright voxel, away from the border
    moved, shifts = perturbed_view(x, 2, 0.0, torch.Generator().manual_seed(0))
    assert shifts.shape == (3, 3) and shifts.abs().max() <= 2 and shifts.abs().sum() > 0
    for volume, (dw, dh, dd) in zip(moved, shifts.tolist(), strict=True):
        assert volume.sum() == 1.0  # moved, not blurred
        bright = (volume[0] == 1).nonzero()[0].tolist()
        assert bright == [4 - dd, 5 - dh, 6 - dw]
    assert torch.equal(shifted(moved, -shifts)[..., 2:-2, 2:-2, 2:-2], x[..., 2:-2, 2:-2, 2:-2])


def test_a_segmenters_moving_average_is_compared_on_the_students_voxels():
    """The EMA's view is shifted, its output shifted back: with a voxel-wise network and no
    noise, it predicts exactly what it predicts on the student's view (inside the border)."""
    torch.manual_seed(0)
    student = nn.Conv3d(1, 3, kernel_size=1)  # voxel-wise: no context to lose
    cls = get_method("mean_teacher")
    assert "segmentation" in cls.tasks and 3 in cls.ranks
    shapes = Shapes(num_classes=3, total_epochs=1, task="segmentation", rank=3)
    method = cls(cls.Params(translate=2, noise=0.0), shapes)
    method.bind_student(student)
    x = torch.randn(2, 1, 16, 16, 16)
    (taught,) = method.teach(x, student)
    with torch.no_grad():
        direct = student(x)
    inside = (..., slice(2, -2), slice(2, -2), slice(2, -2))
    assert torch.equal(taught.logits[inside], direct[inside])

    view, _ = perturbed_view(x, 2, 0.0, torch.Generator().manual_seed(0))  # teach's (seed 0)
    with torch.no_grad():
        unaligned = method.ema.module(view)  # what the student would be compared with unshifted
    targets = torch.randint(0, 3, (2, 16, 16, 16))
    aligned = method(Outputs(direct), [taught], targets, epoch=10.0)["consistency"]
    misaligned = method(Outputs(direct), [Outputs(unaligned)], targets, epoch=10.0)["consistency"]
    assert aligned < 0.5 * misaligned  # only the reflected border differs


def test_class_weights_by_hand():
    inverse = class_weights((70, 20, 10), "inverse")
    raw = torch.tensor([1 / 70, 1 / 20, 1 / 10])
    torch.testing.assert_close(inverse, raw * 3 / raw.sum())
    effective = class_weights((70, 20, 10), "effective", beta=0.99)
    raw = torch.tensor([(1 - 0.99) / (1 - 0.99**n) for n in (70, 20, 10)])
    torch.testing.assert_close(effective, raw * 3 / raw.sum())
    assert class_weights((5, 0), "inverse").tolist() == [2.0, 0.0]


def kd(counts, **params):
    cls = get_method("kd")
    return cls(cls.Params(**params), Shapes(num_classes=len(counts), total_epochs=1,
                                            class_counts=counts))  # fmt: skip


def test_balanced_kd_with_equal_counts_is_plain_kd_and_skewed_counts_favour_the_rare_class():
    torch.manual_seed(0)
    s, t = torch.randn(8, 3), torch.randn(8, 3)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])
    plain = kd((4, 4, 4))(Outputs(s), [Outputs(t)], y, 0.0)
    equal = kd((4, 4, 4), class_weights="inverse")(Outputs(s), [Outputs(t)], y, 0.0)
    for term in ("loss", "ce", "kd"):
        torch.testing.assert_close(equal[term], plain[term])
    skewed = kd((90, 9, 1), class_weights="inverse")(Outputs(s), [Outputs(t)], y, 0.0)
    w = class_weights((90, 9, 1), "inverse")
    torch.testing.assert_close(skewed["ce"], F.cross_entropy(s, y, weight=w))
    per_image = F.kl_div(F.log_softmax(s / 4, 1), F.log_softmax(t / 4, 1), reduction="none",
                         log_target=True).sum(1)  # fmt: skip
    torch.testing.assert_close(skewed["kd"], 16 * (per_image * w[y]).sum() / w[y].sum())


def test_kd_trains_pool_images_on_the_kd_term_only():
    torch.manual_seed(1)
    s, t = torch.randn(6, 3, requires_grad=True), torch.randn(6, 3)
    y = torch.tensor([0, 1, UNLABELLED, UNLABELLED, 2, UNLABELLED])
    terms = kd((2, 2, 2))(Outputs(s), [Outputs(t)], y, 0.0)
    torch.testing.assert_close(terms["ce"], F.cross_entropy(s[[0, 1, 4]], y[[0, 1, 4]]))
    pool_only = kd((2, 2, 2))(Outputs(s), [Outputs(t)], torch.full((6,), UNLABELLED), 0.0)
    assert pool_only["ce"].item() == 0.0 and torch.isfinite(pool_only["loss"])
    pool_only["loss"].backward()
    assert s.grad.abs().sum() > 0  # the KD term still teaches


def test_balanced_dkd_weighs_ce_and_each_images_terms_by_its_class():
    from kdray.methods.dkd import dkd_terms

    cls = get_method("dkd")
    torch.manual_seed(2)
    s, t = torch.randn(6, 3), torch.randn(6, 3)
    y = torch.tensor([0, 0, 0, 0, 1, 2])
    shapes = Shapes(num_classes=3, total_epochs=12, class_counts=(40, 5, 5))
    dkd = cls(cls.Params(class_weights="inverse", warmup_epochs=0), shapes)
    terms = dkd(Outputs(s), [Outputs(t)], y, 1.0)
    w = class_weights((40, 5, 5), "inverse")
    torch.testing.assert_close(terms["ce"], F.cross_entropy(s, y, weight=w))
    log_t = F.log_softmax(t / 4, 1)
    per_image = [dkd_terms(s[i : i + 1], log_t[i : i + 1], y[i : i + 1], 4.0) for i in range(6)]
    tckd = sum(w[y[i]] * per_image[i][0] for i in range(6)) / w[y].sum()
    torch.testing.assert_close(terms["tckd"], tckd)
    plain = cls(cls.Params(warmup_epochs=0), shapes)(Outputs(s), [Outputs(t)], y, 1.0)
    assert not torch.allclose(plain["tckd"], terms["tckd"])
