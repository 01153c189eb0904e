"""Defective KD (Yuan et al., 2020): the teacher is a checkpoint taken early, when its validation
accuracy first enters a target band, so a poorly trained teacher guides the student."""

from kdray.strategies.base import register
from kdray.strategies.normal import NormalKD


@register
class DefectiveKD(NormalKD):
    name = "defective"
    teacher_stop = "band"
