"""Checks of a validated job that need more than its fields: timm's model names, weights files,
where experiment folders can go."""

from __future__ import annotations

import os
from pathlib import Path

from kdray.spec.job import SELF_TEACHER, Job
from kdray.tasks import DEFAULT_TASK, get_task, weights
from kdray.tasks.weights import (
    DEFAULT,
    WeightsError,
    setting_kind,
)


def model_problems(job: Job) -> list[str]:
    """Checks that need timm or the file system: model names and local weight files. Names
    are checked against the data's task when the job declares it (else single-label: timm)."""
    task = get_task(job.data.task_type or job.data.declared_task() or DEFAULT_TASK)
    problems, checked = [], set()
    for name, study in job.studies.items():
        for role, models in (
            ("teachers", [t for group in study.teacher_groups() for t in group]),
            ("students", study.students),
        ):
            for model in models:
                if (model == SELF_TEACHER and role == "teachers") or model in checked:
                    continue  # a bad model is named once, where it first appears
                checked.add(model)
                problem = task.model_problem(model, _input_size(job))
                if problem:
                    problems.append(f"studies.{name}.{role}: {problem}")
    return problems + weights_problems(job)


def _input_size(job: Job) -> int | tuple[int, ...]:
    """What a model of the job takes: its image size, or a volume's training patch."""
    return tuple(job.data.patch) if job.data.spatial_rank == 3 else job.data.image_size


def weights_problems(job: Job) -> list[str]:
    """Entries of `pretrained` for no model, tags timm does not have, unusable files."""
    import timm

    from kdray.tasks.models import weights_problem

    problems = [
        f"pretrained.{model}: not a model of any study"
        for model in job.pretrained
        if model != DEFAULT and model not in job.models()
    ]
    for model, value in job.pretrained.items():
        if model not in job.models() and model != DEFAULT and setting_kind(value) == "file":
            problem = weights_problem(Path(value))  # a stranger's file: still say what is wrong
            problems += [f"pretrained.{model}: {problem}"] if problem else []
    usable = [m for m in job.models() if timm.is_model(weights.timm_model_of(m))]
    for model in sorted(usable):  # others: said above
        try:
            source = weights.sources(job.pretrained, [model]).get(model)
        except WeightsError as exc:
            problems.append(str(exc))
            continue
        problem = weights_problem(Path(source.file)) if source and source.file else None
        if problem:
            problems.append(f"pretrained.{model}: {problem}")
    return problems


VIRTUAL_FILE_SYSTEMS = ("/proc", "/sys", "/dev")


def storage_problems(storage: str) -> list[str]:
    """Whether experiment folders can be created under `storage` (nothing is created here).
    Checked where the grid runs (`validate`, `run`), not by `submit`: a cluster's storage
    need not exist on the submitting machine."""
    path = Path(storage).expanduser().resolve()
    if any(path == Path(v) or Path(v) in path.parents for v in VIRTUAL_FILE_SYSTEMS):
        return [f"storage: {path} is in a virtual file system; give a folder on disk"]
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return [f"storage: {existing} is a file, not a folder; give a folder for experiments"]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"storage: {existing} is not writable; give a folder you can write to"]
    return []
