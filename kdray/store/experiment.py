"""The experiment folder: everything a grid needs and produces lives under `<storage>/<name>/`.

job.json      the validated job (overrides applied)
plan.json     every run of the grid, with its id, stage and roles
data/         the decoded array cache
runs/<id>/    per run: summary.json, epochs.jsonl, model.pt, attempts.json, checkpoint.pt
              (`kdray.store.run_folder`)
train/<pack>/ Ray Train's storage for a trial (a pack of runs; per-epoch checkpoints of runs
              made before packing)
tune/<time>/  Ray Tune's experiment state, one per `kdray run`/`resume` of the grid
costs/        each model's measured cost per data shape and device (`kdray.train.cost`)
versions.json the versions of python and the packages that shape results, and the pretrained
              weights the runs start from (name, tag, sha256), at creation
results/      trials.parquet, epochs.parquet
search/       a searching job's runs made during the grid (runs.jsonl: samples, confirmations)
              and its samplers' state (journal.log: Optuna's journal)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from kdray.spec.job import STORED, Job
from kdray.spec.plan import Plan, RunSpec, make_plan
from kdray.store import versions
from kdray.store.json_files import ExperimentError, damaged, read_json
from kdray.store.run_folder import RunFolder
from kdray.tasks.weights import LocalWeights, WeightsError, find_all, missing_line

SEARCH_RUNS = "runs.jsonl"
SEARCH_JOURNAL = "journal.log"  # Optuna's journal of every search's trials

# how a grid is run and watched, and where its weights lie (their checksums are in the run
# ids), not what it trains
RUN_SETTINGS = ("tracking", "faults", "weights_cache")


def same_training(old: Job, new: Job) -> bool:
    """Whether two jobs train the same runs: they may differ in tracking and fault settings
    (MLflow added to a started grid, more retries) and in how runs are packed into trials,
    which the folder then takes."""
    return _as_trained(old, new) == new


def _as_trained(old: Job, new: Job) -> Job:
    """`old` with what `new` may change in a started folder taken from `new`."""
    update = {key: getattr(new, key) for key in RUN_SETTINGS}
    update["resources"] = old.resources.model_copy(
        update={"runs_per_trial": new.resources.runs_per_trial}
    )
    return old.model_copy(update=update)


def training_changes(old: Job, new: Job, limit: int = 4) -> str:
    """`train.epochs 4 -> 8, studies.kd.search.samples 3 -> 8`: the fields where `new` trains
    other runs than `old`, the first `limit` of them."""
    before = _flat(_as_trained(old, new).model_dump(mode="json"))
    after = _flat(new.model_dump(mode="json"))
    changed = [
        f"{key} {json.dumps(before.get(key, '-'))} -> {json.dumps(after.get(key, '-'))}"
        for key in sorted(set(before) | set(after))
        if before.get(key, "-") != after.get(key, "-")
    ]
    more = f" and {len(changed) - limit} more" if len(changed) > limit else ""
    return ", ".join(changed[:limit]) + more


def _flat(value, prefix: str = "") -> dict:
    if not isinstance(value, dict) or not value:
        return {prefix: value}
    out = {}
    for key, item in value.items():
        out.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


@dataclass(frozen=True)
class Experiment:
    root: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def tune_dir(self) -> Path:
        return self.root / "tune"

    @property
    def results_dir(self) -> Path:
        return self.root / "results"

    @property
    def search_dir(self) -> Path:
        return self.root / "search"

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def job(self, recheck: bool = True) -> Job:
        """The job the experiment runs. `recheck=False`: without the checks against the task
        registry, which it passed when the experiment was made (for a grid's light processes;
        a driver checks it again, as kdray may have changed since)."""
        path = self.root / "job.json"
        advice = (
            "delete it and run the job file again (`kdray run JOB_FILE`): it rewrites job.json, "
            "and runs that finished keep their results"
        )
        raw = read_json(path, advice)
        train = raw.get("train") if isinstance(raw, dict) else None
        if isinstance(train, dict) and "augment_on" not in train:
            # a folder made before the device path: its runs go on drawing the views they began
            # with (their ids do not say which)
            raw["train"] = {**train, "augment_on": "loader"}
        try:
            return Job.model_validate(raw, context={STORED: not recheck})
        except (ValidationError, ValueError) as exc:
            raise ExperimentError(damaged(path, exc, advice)) from None

    def plan(self) -> Plan:
        """The grid's runs, with those a search made during the grid (`add_runs`); a plan.json
        that is damaged or predates methods is rebuilt from the job (a run's id depends only on
        the job, so nothing changes name)."""
        return self._planned().with_runs(self.added_runs())

    def _planned(self) -> Plan:
        path = self.root / "plan.json"
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if not any("strategy" in run for run in saved["runs"]):
                return Plan.from_json(saved)
        except (UnicodeDecodeError, KeyError, TypeError, ValueError):  # JSONDecodeError too
            pass
        plan = make_plan(self.job(), versions.recorded_checksums(self.root))
        path.write_text(json.dumps(plan.to_json(), indent=2))
        return plan

    def add_runs(self, runs: list[RunSpec]) -> None:
        """Record runs made during the grid (a search's samples and confirmations): one line
        each, appended and synced, so a grid stopped at any point keeps every run it made."""
        path = self.search_dir / SEARCH_RUNS
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.writelines(json.dumps(run.to_dict()) + "\n" for run in runs)
            fh.flush()
            os.fsync(fh.fileno())

    def check_search_journal(self) -> None:
        """Optuna reads the searches' journal inside the grid's ledger (a Ray actor), where a
        damaged line is a traceback: `ExperimentError` naming it first. A last line cut short
        by a crash (no newline yet) is Optuna's to skip, and is not checked."""
        path = self.search_dir / SEARCH_JOURNAL
        if not path.is_file():
            return
        for number, line in enumerate(path.read_bytes().split(b"\n")[:-1], 1):
            try:
                json.loads(line)
            except (ValueError, UnicodeDecodeError) as exc:
                advice = (
                    f"restore it from a copy, or delete {self.search_dir} and run `kdray resume "
                    f"{self.root}` to start the searches again"
                )
                raise ExperimentError(
                    damaged(path, ValueError(f"line {number}: {exc}"), advice)
                ) from None

    def added_runs(self) -> list[RunSpec]:
        """The runs `add_runs` recorded, in order; a last line cut short by a crash is left out."""
        path = self.search_dir / SEARCH_RUNS
        if not path.is_file():
            return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(RunSpec.from_dict(json.loads(line)))
            except (ValueError, TypeError):
                continue  # a line cut short by a crash: its sample is drawn again
        return out

    def run(self, run_id: str) -> RunFolder:
        """The run's folder and its files (`kdray.store.run_folder`)."""
        return RunFolder(self.run_dir(run_id))

    def summary(self, run_id: str) -> dict | None:
        return self.run(run_id).summary()

    def started_runs(self) -> bool:
        """Whether any run of this folder was ever launched (its attempts or result exist)."""
        runs = self.root / "runs"
        return runs.is_dir() and any(
            (d / name).exists()
            for d in runs.iterdir()
            for name in ("attempts.json", "summary.json", "failure.json")
        )

    @classmethod
    def for_job(cls, job: Job) -> Experiment:
        return cls(Path(job.storage).expanduser().resolve() / job.name)

    @classmethod
    def create(cls, job: Job, weights: dict[str, LocalWeights] | None = None) -> Experiment:
        """Write the job and its plan; an existing folder must hold the same job, started
        from the same pretrained weights. `weights`: each pretrained model's weights found
        here (default: looked up now; `WeightsError` when some are missing)."""
        exp = cls.for_job(job)
        weights = _found_weights(job) if weights is None else weights
        records = [local.record() for local in weights.values()]
        job_json = job.model_dump_json(indent=2)
        existing = exp.root / "job.json"
        # compared as jobs, not text: a job.json written by an older kdray lacks newer defaults;
        # a folder where no run ever started takes the corrected job (a refused first attempt)
        started = existing.is_file() and exp.started_runs()
        if started and not same_training(exp.job(), job):
            raise ExperimentError(
                f"{exp.root} already holds a different job named {job.name!r} "
                f"({training_changes(exp.job(), job)}): resume it with "
                f"`kdray resume {exp.root}`, or run the new settings under another name "
                f"(--set name={job.name}-2) or storage"
            )
        changed = versions.weights_changes(exp.root, records) if started else []
        if changed:
            raise ExperimentError(
                f"{exp.root} started from other pretrained weights ({'; '.join(changed)}): "
                f"restore those (its {versions.VERSIONS_FILE} lists them), or run these under "
                f"another name (--set name={job.name}-2)"
            )
        is_new = not existing.is_file()
        try:
            exp.root.mkdir(parents=True, exist_ok=True)
            existing.write_text(job_json)
        except OSError as exc:
            raise ExperimentError(
                f"storage: cannot create the experiment folder {exp.root} ({exc.strerror}); "
                "set storage to a writable folder"
            ) from None
        checksums = {model: local.sha256 for model, local in weights.items()}
        plan = make_plan(job, checksums)
        (exp.root / "plan.json").write_text(json.dumps(plan.to_json(), indent=2))
        if is_new:  # what it started with; a resume compares against it (kdray.store.versions)
            versions.record(exp.root, records)
        return exp

    @classmethod
    def open(cls, path: str | Path) -> Experiment:
        exp = cls(Path(path).expanduser().resolve())
        if not exp.root.exists():
            raise ExperimentError(
                f"{exp.root} does not exist; give an experiment folder, <storage>/<job name>/ "
                "as created by `kdray run`"
            )
        for name in ("job.json", "plan.json"):
            if not (exp.root / name).is_file():
                raise ExperimentError(
                    f"{exp.root} is not a kdray experiment folder (no {name}); "
                    "expected <storage>/<job name>/ as created by `kdray run`"
                )
        return exp


def _found_weights(job: Job) -> dict[str, LocalWeights]:
    where = job.weights_caches()
    found, missing = find_all(job.weights_sources(), where)
    if missing:
        raise WeightsError(missing_line(missing, where, "kdray weights JOB_FILE"))
    return found
