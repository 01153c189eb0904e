"""Reverse KD (Yuan et al., 2020): the Hinton loss with the roles swapped in the grid —
small, weaker models teach the big ones."""

from kdray.strategies.base import register
from kdray.strategies.normal import NormalKD


@register
class ReverseKD(NormalKD):
    name = "reverse"
