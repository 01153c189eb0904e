"""Feature methods on volumes: the stage taps of each MONAI family (channels and strides as
the network really produces them), teacher/student stages paired by stride at a 50x width
ratio, and all-stage L1 and attention transfer on 3D stage maps."""

from __future__ import annotations

import pytest
import torch

from kdray.methods import Outputs, Shapes
from kdray.methods.at import AttentionTransfer
from kdray.methods.feature_l1 import FeatureL1
from kdray.methods.features import aligned_pairs, same_size
from kdray.methods.fitnets import FitNets
from kdray.tasks.models import count_params
from kdray.tasks.volume_models import create_volume_model
from kdray.train.distiller import network_outputs

# (tiny network, the input side every stage divides) per family
FAMILIES = [
    ("basicunet3d-f4.4.8.16.32.4", 32),
    ("unet3d-c4.8.16.32-s2.2.2-r1", 32),
    ("segresnet3d-f4-b1.1.1.1", 32),
    ("dynunet3d-f4.8.16.32.32", 32),
    ("densenet3d-f4-g4-b1.1.1.1", 32),
    ("resnet3d-d10-w0.125", 32),
]


@pytest.mark.parametrize(("name", "side"), FAMILIES)
def test_each_stage_has_the_channels_and_stride_its_feature_info_says(name, side):
    torch.manual_seed(0)
    model = create_volume_model(name, 3).eval()
    x = torch.randn(2, 1, side, side, side)
    with torch.no_grad():
        logits, stages = model.forward_intermediates(x)
        assert torch.equal(logits, model(x))  # the taps change nothing the network computes
    info = model.feature_info
    assert len(stages) == len(info) >= 3
    for stage, tap in zip(stages, info, strict=True):
        assert stage.shape == (2, tap["num_chs"], *(side // tap["reduction"],) * 3), tap
    parts = [tap["part"] for tap in info]
    if parts[0] == "encoder":  # a segmenter: encoder shallow to deep, then decoder back up
        reductions = [tap["reduction"] for tap in info]
        depth = parts.count("encoder")
        assert reductions[:depth] == sorted(reductions[:depth])
        assert reductions[depth:] == sorted(reductions[depth:], reverse=True)
        assert set(parts[depth:]) == {"decoder"}
    else:
        assert set(parts) == {"stage"}


def test_a_features_request_through_the_distiller_gives_the_chosen_3d_stages():
    model = create_volume_model("unet3d-c4.8.16-r0", 2)
    outputs = network_outputs(model, torch.randn(2, 1, 16, 16, 16), [1, 2])
    assert outputs.logits.shape == (2, 2, 16, 16, 16)
    # stage 1: the bottom block (stride 4, 16 channels); stage 2: the decoder's stride-2 block
    assert [f.shape for f in outputs.features] == [(2, 16, 4, 4, 4), (2, 4, 8, 8, 8)]


@pytest.mark.parametrize(
    ("teacher", "student", "pairs"),
    [
        # same family: every stage pairs, encoder and decoder alike
        ("basicunet3d", "basicunet3d-f4.4.8.16.32.4", 9),
        # the student's U-Net stops at stride 8, the teacher's at 16: its bottom pairs at 8
        ("unet3d", "unet3d-c4.8.16.32-s2.2.2-r1", 5),
        ("dynunet3d", "dynunet3d-f4.8.16.32.32", 9),
        ("densenet3d", "densenet3d-f8-g8-b2.2.2.2", 5),
        # across families: the strides both have (2, 4, 8, 16)
        ("resnet3d-d50", "densenet3d-f8-g8-b2.2.2.2", 4),
    ],
)
def test_a_50x_smaller_students_stages_pair_with_the_teachers_of_its_stride(
    teacher, student, pairs
):
    with torch.device("meta"):
        t_model, s_model = create_volume_model(teacher, 3), create_volume_model(student, 3)
    assert count_params(t_model) / count_params(s_model) >= 50
    found = aligned_pairs(s_model, t_model)
    assert len(found) == pairs
    s_info, t_info = s_model.feature_info, t_model.feature_info
    for i, j, part in found:
        assert s_info[i]["reduction"] == t_info[j]["reduction"]
        assert s_info[i]["part"] == t_info[j]["part"] == part
    assert len({j for _, j, _ in found}) == pairs  # no teacher stage is used twice


# --- the losses on 3D stage maps ----------------------------------------------------------------


def shapes_3d(student: tuple[int, ...], teacher: tuple[int, ...]) -> Shapes:
    return Shapes(num_classes=3, total_epochs=1, student_channels=student,
                  teacher_channels=(teacher,), task="segmentation", rank=3)  # fmt: skip


def masks() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 8, 8, 4, generator=gen), torch.randint(0, 3, (2, 8, 8, 4))


def test_volumes_are_pooled_per_axis_to_the_smaller_map():
    student, teacher = torch.randn(1, 2, 8, 8, 4), torch.randn(1, 3, 4, 8, 8)
    s, t = same_size(student, teacher)
    assert s.shape == (1, 2, 4, 8, 4) and t.shape == (1, 3, 4, 8, 4)
    assert torch.allclose(s[0, 0, 0, 0, 0], student[0, 0, :2, 0, 0].mean())
    assert torch.allclose(t[0, 0, 0, 0, 0], teacher[0, 0, 0, 0, :2].mean())


def test_attention_transfer_on_volumes_is_zero_for_the_same_maps_and_falls_when_trained():
    logits, y = masks()
    teacher = [torch.randn(2, 16, 8, 8, 4), torch.rand(2, 32, 4, 4, 2) ** 3]
    same = AttentionTransfer(AttentionTransfer.Params(stages=[0, 1]), shapes_3d((16, 32), (16, 32)))
    out = same(Outputs(logits, teacher), [Outputs(logits, teacher)], y, 0.0)
    assert out["at"].item() == 0.0

    torch.manual_seed(0)
    student = [torch.randn(2, 4, 16, 16, 8, requires_grad=True),  # pooled to the teacher's size
               torch.randn(2, 2, 4, 4, 2, requires_grad=True)]  # fmt: skip
    method = AttentionTransfer(AttentionTransfer.Params(ce_weight=0), shapes_3d((4, 2), (16, 32)))
    optimiser = torch.optim.Adam(student, lr=0.05)
    losses = []
    for _ in range(20):
        out = method(Outputs(logits, student), [Outputs(logits, teacher)], y, 0.0)
        optimiser.zero_grad()
        out["loss"].backward()
        optimiser.step()
        losses.append(out["at"].item())
    assert losses[-1] < 0.5 * losses[0]


def test_feature_l1_on_volumes_adapts_with_conv3d_zero_for_the_same_maps_and_falls():
    logits, y = masks()
    method = FeatureL1(FeatureL1.Params(ce_weight=0), shapes_3d((4, 6), (8, 6)))
    assert all(isinstance(a[0], torch.nn.Conv3d) and isinstance(a[1], torch.nn.BatchNorm3d)
               for a in method.adapters)  # fmt: skip
    torch.manual_seed(0)
    student = [torch.randn(2, 4, 8, 8, 4), torch.randn(2, 6, 4, 4, 2)]
    mixing = torch.randn(8, 4)  # the teacher's first stage: a channel mix of the student's
    teacher = [torch.einsum("oc,ncdhw->nodhw", mixing, student[0]), student[1].clone()]

    with torch.no_grad():  # adapters that are the mix and the identity: nothing left to learn
        method.adapters[0][0].weight.copy_(mixing[..., None, None, None])
        method.adapters[1][0].weight.copy_(torch.eye(6)[..., None, None, None])
    method.eval()  # batch norm with its initial running statistics (mean 0, variance 1)
    out = method(Outputs(logits, student), [Outputs(logits, teacher)], y, 0.0)
    assert out["l1"].item() < 1e-4

    fresh = FeatureL1(FeatureL1.Params(ce_weight=0), shapes_3d((4, 6), (8, 6)))
    optimiser = torch.optim.Adam(fresh.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        out = fresh(Outputs(logits, student), [Outputs(logits, teacher)], y, 0.0)
        optimiser.zero_grad()
        out["loss"].backward()
        optimiser.step()
        losses.append(out["l1"].item())
    assert losses[-1] < 0.5 * losses[0]


def test_a_fitnets_hint_on_a_volume_classifier_pair_trains_its_conv3d_adapter():
    """The whole path on real networks: stages paired by stride, the chosen pair's maps, the
    hint through a Conv3d adapter, gradients to the student and the adapter only."""
    torch.manual_seed(0)
    teacher = create_volume_model("resnet3d-d10-w0.25", 3).eval()
    student = create_volume_model("densenet3d-f4-g4-b1.1", 3)
    pairs = aligned_pairs(student, teacher)  # strides 2, 4, 8
    stage = FitNets.feature_stages(FitNets.Params(), len(pairs))  # the middle one: stride 4
    (s_stage, t_stage, _) = pairs[stage[0]]
    s_channels = (student.feature_info[s_stage]["num_chs"],)
    t_channels = (teacher.feature_info[t_stage]["num_chs"],)
    shapes = Shapes(num_classes=3, total_epochs=1, student_channels=s_channels,
                    teacher_channels=(t_channels,), rank=3)  # fmt: skip
    method = FitNets(FitNets.Params(), shapes)
    assert isinstance(method.adapters[0][0], torch.nn.Conv3d)
    x, y = torch.randn(2, 1, 16, 16, 16), torch.tensor([0, 2])
    with torch.no_grad():
        taught = network_outputs(teacher, x, [t_stage])
    out = method(network_outputs(student, x, [s_stage]), [taught], y, 0.0)
    out["loss"].backward()
    assert out["hint"] > 0 and method.adapters[0][0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert student.features.conv0.weight.grad.abs().sum() > 0


def test_a_teacher_of_another_normalisation_sees_a_volume_batch_in_its_own():
    from kdray.data.cache import DataInfo
    from kdray.train.teachers import _renormalise

    torch.manual_seed(0)
    raw = torch.rand(2, 2, 4, 5, 6)  # (N, C, D, H, W): two channels, each its own statistics
    data_mean, data_std = [0.2, 0.4], [0.5, 0.25]
    teacher = {"mean": [0.5, 0.1], "std": [0.2, 0.8]}
    info = DataInfo("", "", ["a", "b"], 2, 6, {}, data_mean, data_std, rank=3, patch=[4, 5, 6])

    def normalised(mean, std):
        return (raw - torch.tensor(mean).view(1, 2, 1, 1, 1)) / torch.tensor(std).view(
            1, 2, 1, 1, 1
        )

    seen = _renormalise(normalised(data_mean, data_std), info, teacher)
    assert torch.allclose(seen, normalised(teacher["mean"], teacher["std"]), atol=1e-5)


def test_a_3d_stage_past_the_aligned_pairs_is_refused_when_the_job_is_read_naming_the_study():
    from kdray.spec.base import JobError
    from kdray.spec.load import load_job

    def load(stages: str):
        return load_job("jobs/volumes.yaml", [f"studies.feature_l1.method.stages={stages}"])

    load("[0, -1]")  # unet3d and its small student: 5 pairs by stride, both ends accepted
    with pytest.raises(JobError) as caught:
        load("[5]")
    assert caught.value.problems == [
        "studies.feature_l1.method.stages 5: the two networks have 5 aligned stages (0..4) "
        "(student unet3d-c4.8.16.32-s2.2.2-r1, teacher unet3d)"
    ]
