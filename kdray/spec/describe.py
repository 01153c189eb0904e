"""A job's grid described for people: what `kdray validate` prints per study, and the warnings
`validate` and `run` both print about the job on its data (budgets, bands, methods)."""

from __future__ import annotations

import math
import netrc
import os
from urllib.parse import urlparse

from kdray.data.budgets import budget_label
from kdray.data.cache import DataInfo, load_targets
from kdray.methods import METHODS
from kdray.spec.fit import label_budget_warnings
from kdray.spec.job import BASELINE, Job
from kdray.spec.plan import Plan
from kdray.spec.search import TRAIN_KEYS
from kdray.tasks import get_task


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`1 seed`, `3 seeds`; `1 study`, `2 studies` (`plural` given)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def study_lines(job: Job, plan: Plan) -> list[str]:
    """One line per study: its method, what it reads from teachers, its KD runs."""
    lines = []
    for name, study in job.studies.items():
        if study.search is not None:
            lines.append(search_line(job, plan, name))
            continue
        method = METHODS[study.method_name()]
        runs = [r for r in plan.runs.values() if f"kd:{name}" in r.roles]
        reads = {r.teacher_outputs for r in runs} - {None}
        source = f"teacher {'/'.join(sorted(reads))}" if reads else "no teacher"
        recipe = (
            f", defective band {list(study.teacher_val_band)}" if study.teacher_val_band else ""
        )
        sizes = [(len(study.students), "student"), (len(study.teachers), "teacher")]
        sizes.append((len(job.seeds), "seed"))
        axes = [counted(n, what) for n, what in sizes if n or what != "teacher"]
        axes += [f"{key} {values} ({len(values)})" for key, values in study.sweep.items()]
        product = math.prod(max(n, 1) for n, _ in sizes) * math.prod(
            len(values) for values in study.sweep.values()
        )
        if job.labelled is not None:
            budgets = [budget_label(b) for b in job.label_budgets()]
            pool = ", students also on the unlabelled pool" if study.unlabelled else ""
            axes.append(f"labels {budgets} ({len(budgets)}){pool}")
            product *= len(budgets)
        same = f" ({product - len(runs)} the same run as another, trained once)"
        lines.append(
            f"study {name}: method {method.name} ({source}{recipe}), "
            f"{counted(len(runs), 'KD run')} = "
            + " x ".join(axes)
            + (same if product > len(runs) else "")
        )
    if job.baseline_search is not None:
        lines.append(search_line(job, plan, BASELINE))
    return lines


def search_line(job: Job, plan: Plan, name: str) -> str:
    """A searched study (or the searched baseline): its cells, samples, sampler, early
    stopping and confirmation."""
    search = job.search_of(name)
    method = "none (no teacher)" if name == BASELINE else job.studies[name].method_name()
    cells = [c for c in plan.searches.values() if c.study == name]
    stop = search.early_stop
    stopping = (
        "no early stopping"
        if stop.rule == "none"
        else f"{stop.rule} from epoch {stop.grace_epochs}, keeping ~1 in {stop.reduction_factor}"
    )
    epochs = job.train.epochs
    samples = counted(search.most_samples(epochs), "sample")
    if search.budget is not None:
        samples = f"up to {samples}"
    what = name if name == BASELINE else f"study {name}"
    return (
        f"{what}: method {method}, searched: {counted(len(cells), 'cell')} x {samples} "
        f"({search.algorithm}, seed {search.seed}) of {', '.join(search.space)} on seed "
        f"{job.seeds[0]}, {stopping} (at most {search.cell_budget(epochs)} epochs a cell); "
        "the best on validation confirmed on "
        f"{counted(len(job.seeds), 'seed')}"
    )


def _spent_as(search, epochs: int, by_budget: bool) -> str:
    """What a search's compute is compared by: its budget, or its samples and stopping."""
    if by_budget:
        return f"budget {search.budget}"
    stop = search.early_stop
    rule = (
        stop.rule
        if stop.rule == "none"
        else f"{stop.rule} {stop.grace_epochs}/{stop.reduction_factor}"
    )
    return f"{search.most_samples(epochs)} samples/{rule}"


def job_warnings(job: Job, num_classes: int, train_labels=None) -> list[str]:
    """What `validate` and `run` both warn of in a job on this data, besides the data's own
    and a band's (which needs the decoded validation labels): comparisons at unequal budgets,
    each method's and precision's caveats, label budgets the data cannot tell apart, tracking
    that would be dropped, fields that change nothing."""
    return [
        *budget_warnings(job), *method_warnings(job, num_classes),
        *label_budget_warnings(job, train_labels), *precision_warnings(job),
        *tracking_warnings(job), *unused_field_warnings(job),
    ]  # fmt: skip


def unused_field_warnings(job: Job) -> list[str]:
    """Fields a study sets that nothing reads. Warned of, not refused: an experiment made before
    this check must still resume."""
    return [
        f"studies.{name}.eval_every_steps: used only to check a defective teacher against its "
        "teacher_val_band, which this study has not: it changes nothing; set teacher_val_band "
        "or remove it"
        for name, study in job.studies.items()
        if study.eval_every_steps is not None and study.teacher_val_band is None
    ]


def tracking_warnings(job: Job) -> list[str]:
    """W&B online with no API key where the driver runs: each run would drop its tracking
    (in a worker's log the user never reads) and train on."""
    cfg = job.tracking.wandb
    if cfg is None or cfg.mode != "online" or os.environ.get("WANDB_API_KEY"):
        return []
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        if netrc.netrc().authenticators(host or "api.wandb.ai"):
            return []
    except (OSError, netrc.NetrcParseError):
        pass  # no ~/.netrc, or one wandb cannot read either
    return [
        "tracking.wandb.mode online, and no W&B API key here (WANDB_API_KEY, or the ~/.netrc "
        "entry `wandb login` writes): every run would train with its W&B tracking off; log in "
        "where the runs train, or use mode offline and `wandb sync` the run folders later"
    ]


def precision_warnings(job: Job) -> list[str]:
    """bf16 on a CPU over images of 16 px or less: a ResNet's last stage (input at 1/16) then
    opens with a 3x3 stride-2 convolution over a 1x1 map, whose bf16 weight gradients oneDNN
    (torch 2.14.1) gets wrong on Intel AVX-512 BF16 CPUs (measured: wrong in 191 of 200 steps,
    not finite in 9; right at 2x2 and larger, at stride 1, and in fp16 and fp32)."""
    size = getattr(job.data, "image_size", None)
    on_cpu = job.resources.device != "cuda" and job.data.spatial_rank == 2
    if job.train.precision != "bf16" or not on_cpu or size is None or size > 16:
        return []
    return [
        f"train.precision bf16 with data.image_size {size}: on a CPU, a ResNet's last stage "
        "then opens with a stride-2 convolution over a 1x1 map, whose bf16 weight gradients "
        "oneDNN gets wrong on Intel CPUs with AVX-512 BF16 (silently, sometimes NaN); use "
        "train.precision fp32 on CPUs, or images over 16 px"
    ]


def budget_warnings(job: Job) -> list[str]:
    """Comparisons a job makes at unequal tuning: searched studies at unequal budgets (equal
    `budget`s are equal compute whatever the samples and stopping; without them, the samples
    and early stopping must match), and studies that search training settings while the
    baseline they are compared with does not."""
    searches = {name: s.search for name, s in job.studies.items() if s.search is not None}
    out = _untuned_baseline(job, searches) + _repeating_draws(searches)
    by_budget = all(s.budget is not None for s in searches.values())
    spent = {n: _spent_as(s, job.train.epochs, by_budget) for n, s in searches.items()}
    if len(set(spent.values())) <= 1:
        return out
    shown = ", ".join(f"{name} {budget}" for name, budget in spent.items())
    return out + [
        f"studies: searched with different budgets ({shown}): their methods are not compared "
        "at equal compute; give every search the same budget (epochs a cell), or the same "
        "samples and early_stop"
    ]


def _repeating_draws(searches: dict) -> list[str]:
    """A sampler over a space of a few settings draws some of them again, each a sample."""
    out = []
    for name, search in searches.items():
        size = search.grid_size()
        if size is not None and search.algorithm != "grid":
            out.append(
                f"studies.{name}.search: its space holds {size} settings, and {search.algorithm} "
                "may draw one again (a sample spent on a setting already tried); "
                "algorithm: grid tries each once"
            )
    return out


def _untuned_baseline(job: Job, searches: dict) -> list[str]:
    tuning = {n: sorted(set(s.space) & set(TRAIN_KEYS)) for n, s in searches.items()}
    tuning = {name: keys for name, keys in tuning.items() if keys}
    if not tuning or not job.baseline or job.baseline_search is not None:
        return []
    shown = ", ".join(f"{name} ({', '.join(keys)})" for name, keys in tuning.items())
    return [
        f"studies: {shown} search training settings the baseline trains without: their gain "
        "over it mixes tuning with distillation; search the baseline too "
        "(`baseline: {search: {space: ...}}`)"
    ]


def band_warnings(job: Job, data: DataInfo) -> list[str]:
    """Defective-teacher bands that a teacher which learned nothing can land in: on imbalanced
    data, always predicting the majority class already scores its share of the valid split."""
    labels = load_targets(data.path, "valid")
    if len(labels) == 0:
        return []
    task = get_task(data.task)
    floor, how = task.no_skill(labels, data.classes)
    return [
        f"studies.{study_name}.teacher_val_band {list(study.teacher_val_band)} starts at or "
        f"below {floor:.3f}, the validation {task.primary_title} of {how}: a teacher "
        f"that learned nothing can stop inside it; a band above {floor:.2f} makes a "
        "defective teacher one that learned something, badly"
        for study_name, study in job.studies.items()
        if study.teacher_val_band is not None and study.teacher_val_band[0] <= floor
    ]


def method_warnings(job: Job, num_classes: int) -> list[str]:
    """What each study's method says about these settings on this data (e.g. DKD, 2 classes),
    and each search over a parameter its method has no use for here."""
    out = []
    for name, study in job.studies.items():
        method = METHODS[study.method_name()]
        for setting in study.settings():  # each setting of a sweep: a line said once
            params = job.method_params(name, setting)
            for warning in method.warnings(params, num_classes, job.train.epochs):
                line = f"studies.{name}.method: {warning}"
                out += [] if line in out else [line]
        searched = study.search.space if study.search is not None else {}
        out += [
            f"studies.{name}.search.space.{param}: {study.method_name()} has no use for {param} "
            f"with {num_classes} classes, so every value of it trains alike and its samples "
            "are spent for nothing; take it out of the space"
            for param in method.inert_params(num_classes)
            if param in searched
        ]
    return out
