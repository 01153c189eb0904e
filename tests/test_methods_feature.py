"""Feature methods (FitNets, AT, feature L1): losses against naive computations, gradients,
stage choice, and one training step on real timm stage features."""

from __future__ import annotations

import math

import numpy as np
import pydantic
import pytest
import timm
import torch

from kdray.methods import METHODS, Outputs, Shapes
from kdray.methods.at import AttentionTransfer
from kdray.methods.feature_l1 import FeatureL1
from kdray.methods.fitnets import FitNets

FEATURE_METHODS = {"fitnets": FitNets, "at": AttentionTransfer, "feature_l1": FeatureL1}


def shapes(student: tuple[int, ...], teacher: tuple[int, ...]) -> Shapes:
    return Shapes(
        num_classes=3, total_epochs=1, student_channels=student, teacher_channels=(teacher,)
    )


def np_(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().double().numpy()


def naive_pool(a: np.ndarray, size: int) -> np.ndarray:
    """Average non-overlapping blocks: (N, C, H, W) -> (N, C, size, size), H a multiple of size."""
    n, c, h, w = a.shape
    return a.reshape(n, c, size, h // size, size, w // size).mean(axis=(3, 5))


def naive_ce(logits: torch.Tensor, targets: torch.Tensor) -> float:
    z = np_(logits)
    total = 0.0
    for row, y in zip(z, targets.tolist(), strict=True):
        total += math.log(sum(math.exp(v) for v in row)) - row[y]
    return total / len(z)


def naive_attention(f: np.ndarray, p: float) -> np.ndarray:
    """Q per sample with explicit loops: mean over channels of |f|^p, flattened, L2-normalised."""
    n, c, h, w = f.shape
    q = np.zeros((n, h * w))
    for i in range(n):
        for y in range(h):
            for x in range(w):
                q[i, y * w + x] = sum(abs(f[i, k, y, x]) ** p for k in range(c)) / c
        q[i] /= max(math.sqrt(sum(v * v for v in q[i])), 1e-12)
    return q


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, generator=gen), torch.tensor([0, 2])


# --- (a) losses against naive computations --------------------------------------------------


def test_fitnets_pools_an_8x8_student_map_to_the_4x4_teacher_and_takes_the_mse():
    torch.manual_seed(0)
    logits, y = batch()
    f_s, f_t = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)
    method = FitNets(FitNets.Params(hint_weight=7.0, ce_weight=0.5), shapes((4,), (6,)))
    out = method(Outputs(logits, [f_s]), [Outputs(torch.zeros(2, 3), [f_t])], y, 0.0)

    adapted = np_(method.adapters[0](f_s))  # (2, 6, 8, 8): the adapter runs at the student's size
    hint = np.mean((naive_pool(adapted, 4) - np_(f_t)) ** 2)
    ce = naive_ce(logits, y)
    assert set(out) == {"loss", "ce", "hint"}
    assert out["hint"].item() == pytest.approx(hint, rel=1e-5)
    assert out["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert out["loss"].item() == pytest.approx(0.5 * ce + 7.0 * hint, rel=1e-5)


@pytest.mark.parametrize("p", [2.0, 1.5])
def test_at_against_attention_maps_computed_with_loops(p):
    torch.manual_seed(1)
    logits, y = batch(1)
    # stage 0: 8x8 student map pooled to the 4x4 teacher's; stage 1: same size, other channels
    f_s = [torch.randn(2, 3, 8, 8), torch.randn(2, 5, 2, 2)]
    f_t = [torch.randn(2, 4, 4, 4), torch.randn(2, 2, 2, 2)]
    params = AttentionTransfer.Params(p=p, at_weight=10.0, ce_weight=2.0)
    method = AttentionTransfer(params, shapes((3, 5), (4, 2)))
    out = method(Outputs(logits, f_s), [Outputs(torch.zeros(2, 3), f_t)], y, 0.0)

    s_maps = [naive_pool(np_(f_s[0]), 4), np_(f_s[1])]
    at = sum(
        np.mean((naive_attention(s, p) - naive_attention(np_(t), p)) ** 2)
        for s, t in zip(s_maps, f_t, strict=True)
    )
    ce = naive_ce(logits, y)
    assert set(out) == {"loss", "ce", "at"}
    assert list(method.parameters()) == []
    assert out["at"].item() == pytest.approx(at, rel=1e-5)
    assert out["loss"].item() == pytest.approx(2.0 * ce + 10.0 * at, rel=1e-5)


def test_feature_l1_averages_the_mean_absolute_difference_over_stages():
    torch.manual_seed(2)
    logits, y = batch(2)
    # stage 0: student 8x8 pooled to 4x4; stage 1: the teacher's 8x8 pooled to the student's 4x4
    f_s = [torch.randn(2, 3, 8, 8), torch.randn(2, 4, 4, 4)]
    f_t = [torch.randn(2, 5, 4, 4), torch.randn(2, 2, 8, 8)]
    params = FeatureL1.Params(l1_weight=3.0)
    method = FeatureL1(params, shapes((3, 4), (5, 2)))
    out = method(Outputs(logits, f_s), [Outputs(torch.zeros(2, 3), f_t)], y, 0.0)

    a0 = naive_pool(np_(method.adapters[0](f_s[0])), 4)
    a1 = np_(method.adapters[1](f_s[1]))
    l1 = (np.mean(np.abs(a0 - np_(f_t[0]))) + np.mean(np.abs(a1 - naive_pool(np_(f_t[1]), 4)))) / 2
    ce = naive_ce(logits, y)
    assert set(out) == {"loss", "ce", "l1"}
    assert out["l1"].item() == pytest.approx(l1, rel=1e-5)
    assert out["loss"].item() == pytest.approx(ce + 3.0 * l1, rel=1e-5)


# --- (b) gradients ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FEATURE_METHODS))
def test_gradients_reach_the_adapters_and_student_but_never_the_teacher(name):
    torch.manual_seed(3)
    cls = FEATURE_METHODS[name]
    f_s = [torch.randn(2, 3, 8, 8, requires_grad=True), torch.randn(2, 4, 4, 4, requires_grad=True)]
    f_t = [torch.randn(2, 5, 4, 4, requires_grad=True), torch.randn(2, 6, 4, 4, requires_grad=True)]
    t_logits = torch.randn(2, 3, requires_grad=True)
    params = cls.Params(stage=0) if name == "fitnets" else cls.Params(stages=[0, 1])
    channels = ((3,), (5,)) if name == "fitnets" else ((3, 4), (5, 6))
    method = cls(params, shapes(*channels))
    used = f_s[:1] if name == "fitnets" else f_s
    teacher_used = f_t[:1] if name == "fitnets" else f_t
    logits = torch.randn(2, 3, requires_grad=True)
    out = method(Outputs(logits, used), [Outputs(t_logits, teacher_used)], torch.tensor([0, 1]), 0)
    out["loss"].backward()

    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.parameters())
    if name != "at":
        assert len(list(method.parameters())) == 3 * len(used)  # conv weight, BN weight and bias
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in used)
    assert all(f.grad is None for f in f_t) and t_logits.grad is None


# --- (c) stage choice and settings ------------------------------------------------------------


def test_feature_methods_are_registered_as_single_teacher_feature_methods():
    for name, cls in FEATURE_METHODS.items():
        assert METHODS[name] is cls
        assert cls.needs == "features" and cls.allows_ensemble is False


def test_default_stages():
    assert FitNets.feature_stages(FitNets.Params(), 5) == [2]
    assert FitNets.feature_stages(FitNets.Params(), 4) == [2]
    assert FitNets.feature_stages(FitNets.Params(), 1) == [0]
    assert AttentionTransfer.feature_stages(AttentionTransfer.Params(), 5) == [1, 2, 3, 4]
    assert AttentionTransfer.feature_stages(AttentionTransfer.Params(), 1) == [0]
    assert FeatureL1.feature_stages(FeatureL1.Params(), 4) == [0, 1, 2, 3]


def test_negative_stages_count_from_the_deepest():
    assert FitNets.feature_stages(FitNets.Params(stage=-1), 5) == [4]
    assert FitNets.feature_stages(FitNets.Params(stage=-5), 5) == [0]
    at = AttentionTransfer.Params(stages=[-1, 0, 2])
    assert AttentionTransfer.feature_stages(at, 5) == [4, 0, 2]
    assert FeatureL1.feature_stages(FeatureL1.Params(stages=[-2, -1]), 3) == [1, 2]


@pytest.mark.parametrize(
    ("cls", "params", "message"),
    [
        (
            FitNets,
            {"stage": 7},
            r"fitnets\.stage 7: the two networks have 5 aligned stages \(0..4\)",
        ),
        (FitNets, {"stage": -6}, r"fitnets\.stage -6: .* 5 aligned stages"),
        (AttentionTransfer, {"stages": [1, 5]}, r"at\.stages 5: .* 5 aligned stages \(0\.\.4\)"),
        (AttentionTransfer, {"stages": [1, -4]}, r"at\.stages -4: aligned stage 1 is chosen twice"),
        (FeatureL1, {"stages": [-9]}, r"feature_l1\.stages -9: .* 5 aligned stages"),
    ],
)
def test_out_of_range_or_repeated_stages_are_refused_naming_the_field(cls, params, message):
    with pytest.raises(ValueError, match=message):
        cls.feature_stages(cls.Params(**params), 5)


def test_validate_refuses_a_stage_past_the_aligned_pairs_in_one_line(tmp_path):
    from tests.test_bad_inputs import cli, job_dict, refused, write_job

    job = job_dict(tmp_path)  # resnet10t teaching test_resnet: 5 aligned stage pairs
    job["studies"]["normal"]["method"] = {"name": "at", "stages": [1, 7]}
    errors = refused("validate", write_job(tmp_path, job))
    assert errors.splitlines() == [
        f"error {tmp_path / 'job.yaml'}: studies.normal.method.stages 7: the two networks "
        "have 5 aligned stages (0..4) (student test_resnet, teacher resnet10t)"
    ]
    job["studies"]["normal"]["method"] = {"name": "fitnets"}
    job["studies"]["normal"]["sweep"] = {"stage": [-5, 4]}  # the first and the deepest pair
    accepted = cli("validate", write_job(tmp_path, job))
    assert accepted.exit_code == 0, accepted.output


def test_no_aligned_stage_and_bad_settings_are_refused():
    with pytest.raises(ValueError, match="fitnets.stage: the two networks have no aligned stages"):
        FitNets.feature_stages(FitNets.Params(), 0)
    for cls, bad in [
        (FitNets, {"hint_weight": -1}),
        (AttentionTransfer, {"p": 0}),
        (AttentionTransfer, {"stages": []}),
        (FeatureL1, {"stages": []}),
        (FeatureL1, {"extra": 1}),
    ]:
        with pytest.raises(pydantic.ValidationError):
            cls.Params(**bad)


def test_adapters_need_one_teacher_channel_count_per_student_stage():
    with pytest.raises(ValueError, match="feature_l1: needs the channels"):
        FeatureL1(FeatureL1.Params(), shapes((3, 4), (5,)))
    with pytest.raises(ValueError, match="fitnets: needs the channels"):
        FitNets(FitNets.Params(), Shapes(num_classes=3, total_epochs=1))


# --- (d) real timm stage features -------------------------------------------------------------


@pytest.fixture(scope="module")
def networks() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    student = timm.create_model("resnet10t", num_classes=3, in_chans=1)
    teacher = timm.create_model("test_resnet", num_classes=3, in_chans=1).eval()
    return student, teacher


@pytest.mark.parametrize("name", sorted(FEATURE_METHODS))
def test_one_training_step_on_real_timm_stage_features(networks, name):
    student, teacher = networks
    cls = FEATURE_METHODS[name]
    params = cls.Params()
    s_chs = [f["num_chs"] for f in student.feature_info]
    t_chs = [f["num_chs"] for f in teacher.feature_info]
    a, b = len(s_chs), len(t_chs)
    n = min(a, b)
    stages = cls.feature_stages(params, n)
    method = cls(
        params,
        shapes(tuple(s_chs[a - n + i] for i in stages), tuple(t_chs[b - n + i] for i in stages)),
    )
    # 4 images: at 32 px the deepest stage is 1x1, where batch norm over 2 samples gives +-1
    # whatever the input, and the conv of that adapter would get no gradient
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 2, 1, 0])
    before_student = [p.detach().clone() for p in student.parameters()]
    before_method = [p.detach().clone() for p in method.parameters()]
    optimizer = torch.optim.SGD([*student.parameters(), *method.parameters()], lr=0.01)

    student.train()
    with torch.no_grad():
        t_fin, t_feats = teacher.forward_intermediates(x)
        t_out = Outputs(teacher.forward_head(t_fin), [t_feats[b - n + i] for i in stages])
    s_fin, s_feats = student.forward_intermediates(x)
    s_out = Outputs(student.forward_head(s_fin), [s_feats[a - n + i] for i in stages])
    out = method(s_out, [t_out], y, 0.0)
    assert all(torch.isfinite(v) for v in out.values())
    optimizer.zero_grad()
    out["loss"].backward()
    optimizer.step()

    changed = [
        not torch.equal(p, q) for p, q in zip(student.parameters(), before_student, strict=True)
    ]
    assert any(changed)
    assert len(before_method) == (0 if name == "at" else 3 * len(stages))
    assert all(
        not torch.equal(p, q) for p, q in zip(method.parameters(), before_method, strict=True)
    )
    s_fin, s_feats = student.forward_intermediates(x)
    again = method(
        Outputs(student.forward_head(s_fin), [s_feats[a - n + i] for i in stages]), [t_out], y, 1.0
    )
    assert torch.isfinite(again["loss"])
