"""What every task shares: the target conventions."""

from __future__ import annotations

UNLABELLED = -1  # a target (or one label of a multi-label target) nobody may read: pool images
