"""Helpers shared by the feature methods (FitNets, AT, feature L1); registers no method.

The worker aligns student and teacher stages (a 2D classifier's from the deepest one, a
segmenter's and every 3D network's by part and input stride: `aligned_pairs`;
`Method.feature_stages` receives the number `n` of aligned pairs and each pair's part) and hands
a method exactly the chosen stages' maps, in the order it chose them. These helpers resolve
those choices, build the student-side adapters and bring a student/teacher pair to one spatial
size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdray.methods.base import Outputs, Shapes


def resolve_stages(field: str, indices: Sequence[int], num_stages: int) -> list[int]:
    """Aligned stage indices, negatives counted from the deepest (Python style), normalised;
    `ValueError` naming `field` (e.g. "fitnets.stage") for an index out of range or repeated."""
    if num_stages < 1:
        raise ValueError(f"{field}: the two networks have no aligned stages")
    resolved: list[int] = []
    for index in indices:
        if not -num_stages <= index < num_stages:
            raise ValueError(
                f"{field} {index}: the two networks have {num_stages} aligned stages "
                f"(0..{num_stages - 1})"
            )
        stage = index % num_stages
        if stage in resolved:
            raise ValueError(f"{field} {index}: aligned stage {stage} is chosen twice")
        resolved.append(stage)
    return resolved


def aligned_pairs(student: nn.Module, teacher: nn.Module) -> list[tuple[int, int, str]]:
    """(student stage, teacher stage, part) of each aligned stage pair, in the student's order.
    Stages that name their `part` and `level` (a segmenter's encoder and decoder stages, at
    input stride 2^level: `kdray.tasks.segmenters`; a 3D network's: `kdray.tasks.volume_taps`)
    pair with the teacher's stage of the same part and level; others (timm classifiers) are
    aligned from the deepest stage (the last n = min of the two counts)."""
    s_info, t_info = list(student.feature_info), list(teacher.feature_info)
    if all("part" in x and "level" in x for x in s_info + t_info):
        where = {(t["part"], t["level"]): j for j, t in enumerate(t_info)}
        return [
            (i, where[(s["part"], s["level"])], s["part"])
            for i, s in enumerate(s_info)
            if (s["part"], s["level"]) in where
        ]
    n = min(len(s_info), len(t_info))
    return [(len(s_info) - n + k, len(t_info) - n + k, "stage") for k in range(n)]


def one_teacher(name: str, teachers: list[Outputs]) -> Outputs:
    """The single teacher a feature method compares with."""
    if len(teachers) != 1:
        raise ValueError(f"{name}: a feature method takes exactly one teacher, got {len(teachers)}")
    return teachers[0]


def stage_channels(name: str, shapes: Shapes) -> list[tuple[int, int]]:
    """(student, teacher) channels of each chosen stage, checked to pair up one to one."""
    student = tuple(shapes.student_channels)
    teacher = tuple(shapes.teacher_channels[0]) if len(shapes.teacher_channels) == 1 else None
    if teacher is None or not student or len(student) != len(teacher):
        raise ValueError(
            f"{name}: needs the channels of the chosen stages of one student and one teacher, "
            f"got student {student} and teachers {tuple(shapes.teacher_channels)}"
        )
    return list(zip(student, teacher, strict=True))


def adapter(student_channels: int, teacher_channels: int, rank: int = 2) -> nn.Sequential:
    """A learned 1x1 convolution (no bias) and batch norm: student channels to the teacher's,
    over `rank` spatial axes (2: images, 3: volumes)."""
    conv, norm = (nn.Conv3d, nn.BatchNorm3d) if rank == 3 else (nn.Conv2d, nn.BatchNorm2d)
    return nn.Sequential(
        conv(student_channels, teacher_channels, kernel_size=1, bias=False),
        norm(teacher_channels),
    )


def adapters(name: str, shapes: Shapes) -> nn.ModuleList:
    """One adapter per chosen stage, in the order the stages were chosen."""
    return nn.ModuleList(adapter(s, t, shapes.rank) for s, t in stage_channels(name, shapes))


def same_size(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of two (N, C, *spatial) maps (images or volumes) to the smaller's
    spatial size, per axis, so neither map is ever upsampled."""
    size = tuple(min(s, t) for s, t in zip(student.shape[2:], teacher.shape[2:], strict=True))
    pool = F.adaptive_avg_pool3d if len(size) == 3 else F.adaptive_avg_pool2d
    if tuple(student.shape[2:]) != size:
        student = pool(student, size)
    if tuple(teacher.shape[2:]) != size:
        teacher = pool(teacher, size)
    return student, teacher
