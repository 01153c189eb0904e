"""Teachers that learned (next to) nothing: a KD verdict over such a teacher reads as if it knew
something, so the closing tables say so in one line (issue 33: chest X-ray teachers at AUROC
0.54, chance 0.5, below their own students' baselines, were distilled without a word)."""

from __future__ import annotations

import math

import pandas as pd

from kdray.data.cache import DataInfo, load_targets
from kdray.tasks import get_task


def weak_teacher_lines(trials: pd.DataFrame, data: DataInfo) -> list[str]:
    """One line per teacher model (finished, outside any defective-teacher band) whose mean
    validation primary metric is within noise of the task's no-skill floor (2 standard errors
    of a proportion at the floor, over the validation images), or below the mean of the
    own no-KD baselines of its students that are no larger than it."""
    done = trials[trials.status == "finished"]
    teachers = done[(done.stage == "teacher") & done.band_low.isna()]
    if teachers.empty or teachers.val_score.isna().all():
        return []
    labels = load_targets(data.path, "valid")
    task = get_task(data.task)
    floor, how = task.no_skill(labels, data.classes)
    noise = 2 * math.sqrt(max(floor * (1 - floor), 0.0) / max(len(labels), 1))
    # the no-KD baselines: runs with the `baseline` role (a teacher run may double as one)
    is_baseline = done.roles.map(lambda roles: roles is not None and "baseline" in list(roles))
    metric = f"validation {task.primary_title}"
    lines = []
    for model, scores in teachers.groupby("model", sort=True).val_score:
        score = scores.mean()
        # its students no larger than it: a smaller teacher (reverse KD) is weaker by design
        size = _params(done, model)
        students = {
            s
            for s in done[(done.stage == "student") & (done.teacher == model)].model
            if s != model and (size is None or (_params(done, s) or 0) <= size)
        }
        own = done[is_baseline & done.model.isin(students)].val_score.dropna()
        if score <= floor + noise:
            lines.append(
                f"teacher {model}: {metric} {score:.3f}, within noise ({noise:.3f}) of "
                f"{floor:.3f}, the score of {how}: it learned (next to) nothing, so its KD rows "
                "say little about distillation"
            )
        elif len(own) and score < own.mean():
            lines.append(
                f"teacher {model}: {metric} {score:.3f}, below its students' own no-KD "
                f"baselines ({own.mean():.3f}), though it is no smaller a model: it "
                "learned little, so its KD rows say little about distillation"
            )
    return lines


def _params(trials: pd.DataFrame, model: str) -> float | None:
    """A model's parameter count, from any of its finished runs (None if none recorded)."""
    counts = trials[trials.model == model].params.dropna()
    return float(counts.iloc[0]) if len(counts) else None
