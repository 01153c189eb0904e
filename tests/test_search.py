"""Searched studies without Ray: the grid's ledger with its Optuna searches, driven by simulated
workers that train runs epoch by epoch in any interleaving, stop, and resume after a crash. The
validation curves are a fixed function of each sample's setting, so what the search draws, stops
and chooses can be compared across timings."""

from __future__ import annotations

import json
import math
import random

import pytest

from kdray.grid.ledger import FINISHED, RunLedger
from kdray.grid.packing import pack_runs
from kdray.grid.search import STOP, WAIT
from kdray.spec.base import JobError
from kdray.spec.load import parse_job
from kdray.store.experiment import Experiment, ExperimentError
from kdray.store.status import status_rows, unfinished_line
from tests.conftest import tiny_job_dict

EPOCHS = 8


def search_job(tmp_path, name="searched", **search):
    block = {
        "space": {"temperature": {"loguniform": [1, 16]}, "alpha": {"uniform": [0.1, 0.9]}},
        "samples": 10,
        "algorithm": "tpe",
        "seed": 3,
        "parallel": 3,
        "early_stop": {"rule": "asha", "grace_epochs": 1, "reduction_factor": 2},
        **search,
    }
    block = {key: value for key, value in block.items() if value is not None}
    studies = {
        "tuned": {
            "teachers": ["resnet10t"],
            "students": ["test_resnet"],
            "method": {"name": "kd"},
            "search": block,
        }
    }
    raw = tiny_job_dict(tmp_path, studies=studies, seeds=[0, 1, 2], baseline=True)
    raw["name"], raw["train"]["epochs"] = name, EPOCHS
    return parse_job(raw)


def curve(setting: dict, epoch: int) -> float:
    """A sample's validation score: best near temperature 4, alpha 0.7; rising with epochs."""
    if not setting:
        return 0.5 + 0.02 * epoch
    if "temperature" not in setting:  # a searched baseline: best near lr 0.01
        return round((0.8 - 0.02 * math.log10(setting["lr"] / 0.01) ** 2) * epoch / EPOCHS, 6)
    quality = 0.9 - 0.05 * math.log(setting["temperature"] / 4) ** 2
    quality -= 0.4 * (setting["alpha"] - 0.7) ** 2
    return round(quality * (1 - math.exp(-epoch / 3)), 6)


class SimulatedGrid:
    """`slots` trials asking the ledger for packs and runs, each step advancing one trial one
    epoch, in an order drawn from `order_seed`. Runs write what a worker writes: attempts,
    epochs and a summary (finished or stopped)."""

    def __init__(self, exp: Experiment, slots: int, order_seed: int):
        self.exp, self.slots, self.rng = exp, slots, random.Random(order_seed)
        plan = exp.plan()
        todo = [r for r in plan.runs.values() if exp.summary(r.run_id) is None]
        packs = pack_runs(todo, 100, slots)
        ids = [tuple(r.run_id for r in p.runs) for p in packs]
        teachers = {r.run_id: tuple(r.teacher_runs) for p in packs for r in p.runs}
        self.ledger = RunLedger(
            ids, teachers, exp.root, max_concurrent=slots, runs_per_fit=100, searching=True
        )
        self.trials: dict[int, dict] = {}  # slot -> {id, queue, calls, run, epoch}
        self.made = 0
        self.finished = False

    def step(self) -> None:
        slot = self.rng.randrange(self.slots)
        trial = self.trials.get(slot)
        if trial is None:
            self.made += 1
            trial_id = f"t{self.made}"
            pack = self.ledger.next_pack(trial_id)
            if pack == FINISHED:
                self.finished = not self.ledger.live
            elif pack is not None:
                self.trials[slot] = {"id": trial_id, "queue": list(pack), "calls": 0, "run": None}
            return
        if trial["run"] is None:
            self._next_run(slot, trial)
        else:
            self._train_epoch(trial)

    def _next_run(self, slot: int, trial: dict) -> None:
        if trial["queue"]:
            run = trial["queue"].pop(0)
            if self.exp.summary(run) is None:
                folder = self.exp.run(run)
                folder.start_attempt()
                done = len(folder.epochs())  # the last checkpoint's epoch
                trial.update(run=run, epoch=done, judged=done == 0)
            return
        got = self.ledger.more_runs(trial["id"], trial["calls"])
        if got == WAIT:
            return
        if not got:
            self.ledger.trial_ended(trial["id"])
            del self.trials[slot]
            return
        trial["calls"] += 1
        trial["queue"] += [run for run, _ in got]

    def _train_epoch(self, trial: dict) -> None:
        run = trial["run"]
        spec = self.exp.plan().runs[run]
        sample = any(r.startswith("sample:") for r in spec.roles)
        if trial["judged"]:  # a resumed sample is judged on its checkpoint's epoch first
            trial["epoch"] += 1
            self.exp.run(run).write_epochs(
                [
                    {"epoch": e, "val_acc": curve(spec.setting, e)}
                    for e in range(1, trial["epoch"] + 1)
                ]
            )
        epoch, value = trial["epoch"], curve(spec.setting, trial["epoch"])
        answer = self.ledger.judge(run, epoch, value) if sample else "go"
        trial["judged"] = answer != WAIT
        if answer == WAIT:
            return
        if answer == STOP or epoch == EPOCHS:
            status = "stopped" if answer == STOP else "finished"
            summary = {"status": status, "epochs": epoch, "val_acc": value}
            summary["primary_metric"] = "acc"
            self.exp.run(run).write_summary(summary)
            trial["run"] = None

    def run(self, max_steps: int = 100_000) -> None:
        for _ in range(max_steps):
            if self.finished:
                return
            self.step()
        raise AssertionError("the simulated grid did not finish")


def outcome(exp: Experiment) -> dict:
    """What the search did: each sample's setting and how it ended, and the confirmed runs."""
    plan = exp.plan()
    samples = {}
    for run in plan.runs.values():
        if any(r.startswith("sample:") for r in run.roles):
            summary = exp.summary(run.run_id)
            samples[run.run_id] = (summary["status"], summary["epochs"])
    confirmed = sorted(r.run_id for r in plan.runs.values() if "kd:tuned" in r.roles)
    return {"samples": samples, "confirmed": confirmed}


def run_search(tmp_path, name, slots, order_seed, interrupt_after=None) -> dict:
    exp = Experiment.create(search_job(tmp_path, name))
    grid = SimulatedGrid(exp, slots, order_seed)
    if interrupt_after is not None:
        for _ in range(interrupt_after):
            grid.step()
        assert not grid.finished
        grid = SimulatedGrid(exp, slots, order_seed + 1)  # a new grid session: nothing in memory
    grid.run()
    return outcome(exp)


def test_a_search_stops_samples_and_confirms_the_best_on_every_seed(tmp_path):
    result = run_search(tmp_path, "one", slots=2, order_seed=0)
    samples = result["samples"]
    assert len(samples) == 10
    statuses = [status for status, _ in samples.values()]
    assert "stopped" in statuses and "finished" in statuses
    stopped_epochs = {epochs for status, epochs in samples.values() if status == "stopped"}
    assert stopped_epochs <= {1, 2, 4}  # the rungs: grace 1, reduction factor 2
    exp = Experiment.for_job(search_job(tmp_path, "one"))
    plan = exp.plan()
    confirmed = [plan.runs[r] for r in result["confirmed"]]
    assert sorted(r.seed for r in confirmed) == [0, 1, 2]
    assert len({str(r.setting) for r in confirmed}) == 1  # one setting on every seed
    best = max(
        (r for r in samples if samples[r][0] == "finished"),
        key=lambda r: curve(plan.runs[r].setting, EPOCHS),
    )
    assert best in result["confirmed"]  # the seed-0 confirmation is the best sample itself
    states = {row["trial_id"]: row["state"] for row in status_rows(exp, alive=False)}
    assert {states[r] for r in samples if samples[r][0] == "stopped"} == {"stopped"}
    assert unfinished_line(exp) is None  # stopped samples ended: an export says nothing is left


def test_the_same_job_draws_stops_and_chooses_the_same_whatever_the_timing(tmp_path):
    sequential = run_search(tmp_path / "a", "timing", slots=1, order_seed=0)
    parallel = run_search(tmp_path / "b", "timing", slots=3, order_seed=7)
    assert parallel == sequential


def test_a_search_interrupted_and_resumed_redoes_nothing_and_chooses_the_same(tmp_path):
    uninterrupted = run_search(tmp_path / "a", "resumed", slots=2, order_seed=1)
    exp_dir = tmp_path / "b"
    resumed = run_search(exp_dir, "resumed", slots=2, order_seed=1, interrupt_after=100)
    assert resumed == uninterrupted
    exp = Experiment.for_job(search_job(exp_dir, "resumed"))
    attempts = {r: exp.run(r).attempts() for r in resumed["samples"]}
    assert max(attempts.values()) <= 2  # a run cut short continued; no ended run started again
    in_flight = sum(a == 2 for a in attempts.values())
    assert 1 <= in_flight <= 2  # those the stop cut short, each continued once


@pytest.mark.parametrize(
    ("search", "words"),
    [
        (
            {"samples": 0},
            "studies.tuned.search.samples: Input should be greater than or equal to 1",
        ),
        ({"algorithm": "bayes"}, "studies.tuned.search.algorithm: Input should be 'tpe'"),
        (
            {"space": {"beta": {"uniform": [1, 2]}}},
            "studies.tuned.search.space.beta: not a setting of kd",
        ),
        (
            {"space": {"alpha": {"uniform": [0.5, 1.5]}}},
            "studies.tuned.search.space.alpha: kd does not take alpha 1.5: Input should be",
        ),
        (  # a word where a number goes: not called a range
            {"space": {"temperature": {"choice": ["a", 2]}}, "samples": 2},
            "studies.tuned.search.space.temperature: kd does not take temperature 'a': Input "
            "should be a valid number",
        ),
        (
            {"space": {"lr": {"loguniform": [1e-3, 1000]}}},
            "studies.tuned.search.space.lr: train.lr cannot be 1000.0: Input should be less "
            "than or equal to 10",
        ),
        (
            {"space": {"lr": {"loguniform": [0, 0.1]}}},
            "studies.tuned.search.space.lr.loguniform: loguniform needs 0 < low",
        ),
        (
            {"space": {"alpha": {"between": [0, 1]}}},
            "studies.tuned.search.space.alpha: give one of {uniform: [lo, hi]}",
        ),
        (
            {"early_stop": {"rule": "asha", "grace_epochs": EPOCHS}},
            "studies.tuned.search.early_stop.grace_epochs: 8 is not below train.epochs",
        ),
        (
            {"budget": 5},
            "studies.tuned.search.budget: 5 epochs is less than one sample trained to the end",
        ),
        (
            {"algorithm": "grid", "samples": 5, "space": {"alpha": {"choice": [0.5, 0.9]}}},
            "studies.tuned.search.samples: 5 is more than the grid's 2 points",
        ),
        (  # one line, not one per type the item is not; the dimension's kind named once
            {"space": {"temperature": {"choice": [2, 4, None]}}},
            "studies.tuned.search.space.temperature.choice: choice lists numbers or words; "
            "item 3 is None",
        ),
        (  # tpe would draw the one setting three times, each a sample
            {"space": {"temperature": {"choice": [2]}, "alpha": {"choice": [0.5]}}, "samples": 3},
            "studies.tuned.search.samples: 3 is more than the 1 settings the space holds (tpe "
            "would draw some again)",
        ),
        (  # a YAML true/false is no number (it was searched as 1.0 / 0.0)
            {"space": {"temperature": {"choice": [True, False]}}},
            "studies.tuned.search.space.temperature.choice: choice lists numbers or words; "
            "item 1 is true",
        ),
        (
            {"space": {"temperature": {"int": [1.5, 4]}}},
            "studies.tuned.search.space.temperature.int.0: Input should be a valid integer",
        ),
    ],
)
def test_a_bad_search_block_is_one_line_naming_its_field(tmp_path, search, words):
    with pytest.raises(JobError) as caught:
        search_job(tmp_path, **search)
    assert len(caught.value.problems) == 1, caught.value.problems
    assert caught.value.problems[0].startswith(words), caught.value.problems


def test_a_sample_its_search_stops_ends_stopped_with_its_curve_and_nothing_more(tmp_path):
    """The worker loop (no Ray): judged after each epoch, stopped after epoch 2 of 8."""
    import torch

    from kdray.data import prepare_data
    from kdray.spec.plan import make_plan, sample_run
    from kdray.store.run_folder import RunFolder
    from kdray.train.run_loop import Worker, train_run

    raw = tiny_job_dict(tmp_path, baseline=False)
    raw["studies"] = {
        "free": {
            "students": ["test_resnet"],
            "method": {"name": "tfkd_virtual"},
            "search": {"space": {"alpha": {"uniform": [0.1, 0.9]}}, "samples": 2},
        }
    }
    raw["train"]["epochs"] = 8
    job = parse_job(raw)
    plan = make_plan(job)
    (cell,) = plan.searches.values()
    spec = sample_run(job, plan, cell, {"alpha": 0.5})
    data = prepare_data(job.data, tmp_path / "data")
    judged = []

    def judge(run, epoch, value):
        judged.append((run.run_id, epoch))
        return epoch >= 2

    worker = Worker(0, 1, torch.device("cpu"), lambda m: m, lambda metrics: None, judge)
    folder = RunFolder(tmp_path / "runs" / spec.run_id)
    summary = train_run(job, spec, data, folder, [], worker)
    assert summary["status"] == "stopped" and summary["epochs"] == 2
    assert summary["stopped_at_epoch"] == 2 and "test_acc" not in summary
    assert judged == [(spec.run_id, 1), (spec.run_id, 2)]
    assert len(folder.epochs()) == 2 and folder.summary()["status"] == "stopped"
    assert not folder.model_file.exists() and not folder.checkpoint_file.exists()


def test_wandb_marks_a_stopped_sample_and_its_search():
    from types import SimpleNamespace

    from kdray.tracking.wandb_backend import WandbRun

    finished = []
    run = SimpleNamespace(summary={}, tags=("kd", "student", "search:tuned"))
    run.finish = lambda: finished.append(True)
    WandbRun(run).finish({"status": "stopped", "epochs": 2, "val_acc": 0.5})
    assert run.tags[-1] == "stopped" and run.summary["kdray_status"] == "stopped"
    assert run.summary["val_acc"] == 0.5 and finished == [True]


def test_hyperband_and_random_samples_are_as_repeatable(tmp_path):
    """Optuna's Hyperband (several halving brackets, each sample's by its number) and the random
    sampler: the same samples, stops and choice for 1 slot and for 3."""
    search = {
        "algorithm": "random",
        "early_stop": {"rule": "hyperband", "grace_epochs": 1, "reduction_factor": 2},
    }

    def run(folder, slots, order_seed):
        exp = Experiment.create(search_job(folder, "hyperband", **search))
        SimulatedGrid(exp, slots, order_seed).run()
        return outcome(exp)

    one, three = run(tmp_path / "a", 1, 0), run(tmp_path / "b", 3, 4)
    assert one == three
    assert {status for status, _ in one["samples"].values()} == {"finished", "stopped"}


def test_tune_gets_a_pack_of_a_run_the_search_made_during_the_grid(tmp_path):
    """The searcher Tune calls (`RunQueue`) knows the runs planned at the start; a pack of a
    confirmation made later is looked up in the plan as it is now."""
    from types import SimpleNamespace

    from kdray.grid.schedule import RunQueue
    from kdray.spec.plan import confirm_runs

    exp = Experiment.create(search_job(tmp_path))
    plan = exp.plan()
    (cell,) = plan.searches.values()
    later = confirm_runs(search_job(tmp_path), plan, cell, {"temperature": 2.0, "alpha": 0.5})
    exp.add_runs(later)
    ledger = SimpleNamespace(next_pack=lambda trial_id: (later[1].run_id,))
    queue = RunQueue(
        ledger, [], trial_config=lambda pack, _: pack.runs, planned=lambda: exp.plan().runs
    )
    (spec,) = queue.suggest("t1")
    assert spec.run_id == later[1].run_id and spec.seed == 1 and "kd:tuned" in spec.roles


def test_a_budget_caps_a_cells_epochs_and_early_stops_buy_more_samples(tmp_path):
    """`budget: 64` epochs (no `samples`): a sample is drawn only while it and those in flight,
    each trained to the end, fit; stopped samples leave room for more than 64 // 8 of them."""

    budget = 64

    def run(folder, slots, order_seed):
        exp = Experiment.create(search_job(folder, "budget", samples=None, budget=budget))
        SimulatedGrid(exp, slots, order_seed).run()
        return outcome(exp)

    one, three = run(tmp_path / "a", 1, 0), run(tmp_path / "b", 3, 5)
    assert one == three  # the budget's rule is as repeatable as the window's
    spent = sum(epochs for _, epochs in one["samples"].values())
    assert spent <= budget
    assert len(one["samples"]) > budget // EPOCHS
    assert budget - spent < EPOCHS  # it stopped drawing only when one more could overrun
    assert len(one["confirmed"]) == 3


def test_searches_of_unequal_budgets_are_warned_of_and_equal_budgets_are_not(tmp_path):
    from kdray.spec.describe import budget_warnings

    def job(first: dict, second: dict):
        raw = search_job(tmp_path).model_dump(mode="json", by_alias=True, exclude_none=True)
        tuned = raw["studies"]["tuned"]
        raw["studies"] = {
            "a": {**tuned, "search": {**tuned["search"], **first}},
            "b": {**tuned, "search": {**tuned["search"], **second}},
        }
        return parse_job(raw)

    (line,) = budget_warnings(job({"samples": 10}, {"samples": 6}))
    assert line.startswith("studies: searched with different budgets (a 10 samples/asha 1/2")
    asha, none = {"rule": "asha", "grace_epochs": 1}, {"rule": "none"}
    assert budget_warnings(job({"early_stop": asha}, {"early_stop": none}))
    equal = job({"budget": 40, "early_stop": asha}, {"budget": 40, "early_stop": none})
    assert budget_warnings(equal) == []


def test_a_search_over_a_few_settings_draws_no_more_than_it_has_and_warns_of_repeats(tmp_path):
    from kdray.spec.describe import budget_warnings

    few = {"temperature": {"choice": [2, 4]}, "alpha": {"choice": [0.5, 0.9]}}
    job = search_job(tmp_path, space=few, samples=None)
    assert job.studies["tuned"].search.most_samples(EPOCHS) == 4  # not the default 16
    (line,) = budget_warnings(job)
    assert line.startswith("studies.tuned.search: its space holds 4 settings, and tpe may draw")
    assert budget_warnings(search_job(tmp_path, space=few, samples=None, algorithm="grid")) == []


def test_a_stopping_grid_neither_stops_nor_lets_a_sample_train_on_unjudged(tmp_path):
    """After Ctrl-C (the ledger closed) a sample asking to be judged is told to wait until its
    worker is stopped: not `go` (it could finish with epochs its search never saw, and be told
    with a curve another timing would not give), not `stop`."""
    exp = Experiment.create(search_job(tmp_path))
    grid = SimulatedGrid(exp, slots=2, order_seed=0)
    for _ in range(400):
        grid.step()
        if grid.ledger.search.owner:
            break
    sample = next(iter(grid.ledger.search.owner))
    assert grid.ledger.judge(sample, 1, 0.5) != WAIT  # the first sample is judged at once
    grid.ledger.close()
    assert grid.ledger.judge(sample, 2, 0.5) == WAIT


def test_a_searched_baseline_is_confirmed_on_every_seed_and_is_the_studies_baseline(tmp_path):
    """`baseline: {search: ...}` over lr: samples without a teacher (role `sample:baseline`),
    the best on validation confirmed on every seed (role `baseline`): the runs each KD cell's
    gain is measured against."""
    import pandas as pd

    from kdray.results.cells import study_cells

    raw = search_job(tmp_path).model_dump(mode="json", by_alias=True, exclude_none=True)
    raw["baseline"] = {
        "search": {
            "space": {"lr": {"loguniform": [1.0e-4, 1.0]}},
            "samples": 6,
            "parallel": 2,
            "early_stop": {"rule": "asha", "grace_epochs": 1, "reduction_factor": 2},
        }
    }
    job = parse_job(raw)
    exp = Experiment.create(job)
    assert not [r for r in exp.plan().runs.values() if "baseline" in r.roles]  # made later
    SimulatedGrid(exp, slots=2, order_seed=0).run()
    runs = exp.plan().runs.values()
    samples = [r for r in runs if "sample:baseline" in r.roles]
    assert len(samples) == 6 and all(not r.teacher_runs and r.train for r in samples)
    confirmed = [r for r in runs if "baseline" in r.roles]
    assert sorted(r.seed for r in confirmed) == [0, 1, 2]
    assert len({str(r.train) for r in confirmed}) == 1
    finished = [r for r in samples if exp.summary(r.run_id)["status"] == "finished"]
    best = max(finished, key=lambda r: curve(r.setting, EPOCHS))
    assert best.run_id in {r.run_id for r in confirmed}

    rows = [
        {
            "trial_id": r.run_id, "model": r.model, "seed": r.seed, "roles": r.roles,
            "status": "finished", "labels": None, "method": r.method, "stage": r.stage,
            "setting": json.dumps(r.setting) if r.setting else None,
            "teacher_trial_ids": r.teacher_runs, "teacher": "+".join(r.teacher_models) or None,
            "band_low": None, "band_high": None, "val_score": 0.5, "test_score": 0.5,
        }
        for r in runs
    ]  # fmt: skip
    (cell,) = study_cells(pd.DataFrame(rows), "tuned")
    assert set(cell.baseline.trial_id) == {r.run_id for r in confirmed}


def test_a_baseline_search_is_checked_and_an_untuned_baseline_is_warned_of(tmp_path):
    from kdray.spec.describe import budget_warnings

    raw = search_job(tmp_path).model_dump(mode="json", by_alias=True, exclude_none=True)
    raw["baseline"] = {"search": {"space": {"temperature": {"uniform": [1, 4]}}}}
    with pytest.raises(JobError) as caught:
        parse_job(raw)
    assert caught.value.problems == [
        "baseline.search.space.temperature: the baseline has no method; it can search lr, "
        "weight_decay, momentum"
    ]
    raw["baseline"] = True
    raw["studies"]["tuned"]["search"]["space"]["lr"] = {"loguniform": [1.0e-4, 0.1]}
    (line,) = budget_warnings(parse_job(raw))
    assert line.startswith("studies: tuned (lr) search training settings the baseline trains")
    raw["baseline"] = {"search": {"space": {"lr": {"loguniform": [1.0e-4, 0.1]}}}}
    assert budget_warnings(parse_job(raw)) == []


def test_the_search_table_counts_each_cell_s_samples_and_names_a_cell_none_ran_for(tmp_path):
    from kdray.export.markdown import tables
    from kdray.results.cells import setting_label
    from kdray.results.tables import write_results

    result = run_search(tmp_path, "table", slots=2, order_seed=0)
    exp = Experiment.for_job(search_job(tmp_path, "table"))
    trials = write_results(exp).to_pandas()
    cells = exp.plan().searches.values()
    _, table = tables(trials, ["tuned"], cells)["tuned.search"]
    (row,) = table.to_dict("records")
    ended = list(result["samples"].values())
    assert row["Samples"] == 10 and row["Stopped"] == sum(s == "stopped" for s, _ in ended)
    assert row["Finished"] + row["Stopped"] == 10
    assert row["Epochs trained"] == sum(epochs for _, epochs in ended)
    assert row["Without stopping"] == 10 * EPOCHS
    confirmed = exp.plan().runs[result["confirmed"][0]]
    assert row["Chosen"] == setting_label(json.dumps(confirmed.setting))

    # another experiment whose seed-0 teacher failed: its cell never sampled, and says why
    failed = Experiment.create(search_job(tmp_path, "failed"))
    (cell,) = failed.plan().searches.values()
    teacher = cell.teacher_runs[0][0]
    failed.run(teacher).write_summary({"status": "failed", "error": "out of memory"})
    trials = write_results(failed).to_pandas()
    assert "tuned.search" not in tables(trials, ["tuned"])  # without the plan: no trace
    _, table = tables(trials, ["tuned"], failed.plan().searches.values())["tuned.search"]
    (row,) = table.to_dict("records")
    assert row["Student"] == "test_resnet" and row["Teacher"] == "resnet10t"
    assert row["Samples"] == 0 and row["Chosen"] == f"none: its teacher run {teacher} failed"


def test_the_ledger_reads_its_searches_without_the_task_registry(tmp_path):
    """The ledger's actor builds its searches from the stored job before the first trial can
    start: re-checking that job against every task's models and methods imported timm and
    MONAI there (4.6 s of a core). A driver still re-checks what it reads back."""
    import subprocess
    import sys

    raw = search_job(tmp_path).model_dump(mode="json")
    raw["data"]["task_type"] = "single_label"  # as MedMNIST's: the methods are checked at once
    exp = Experiment.create(parse_job(raw))
    probe = (
        "import sys; from kdray.grid.search import GridSearch; "
        f"GridSearch({str(exp.root)!r}); "
        "print(sorted(m for m in ('timm', 'monai', 'torchvision') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

    stored = json.loads((exp.root / "job.json").read_text())
    study = stored["studies"]["tuned"]
    study["method"] = {"name": "pixel_kd"}  # segmentation only
    study["search"]["space"] = {"temperature": {"loguniform": [1, 16]}}
    (exp.root / "job.json").write_text(json.dumps(stored))
    with pytest.raises(JobError, match="pixel_kd is defined for segmentation data"):
        exp.job()
    assert exp.job(recheck=False).studies["tuned"].method_name() == "pixel_kd"


def test_a_damaged_search_journal_is_one_line_before_ray_starts(tmp_path):
    from typer.testing import CliRunner

    from kdray.cli import app

    exp = Experiment.create(search_job(tmp_path, "journal"))
    SimulatedGrid(exp, 2, 0).run()
    journal = exp.search_dir / "journal.log"
    lines = journal.read_bytes().split(b"\n")
    assert len(lines) > 4
    journal.write_bytes(b"\n".join(lines) + b'{"op_code": 4, "worker_i')  # cut short: fine
    exp.check_search_journal()
    lines[2] = lines[2][:30]
    journal.write_bytes(b"\n".join(lines))
    with pytest.raises(ExperimentError, match=r"journal.log is damaged \(line 3: "):
        exp.check_search_journal()
    result = CliRunner().invoke(app, ["resume", str(exp.root)])
    assert result.exit_code == 2, result.output
    (line,) = [ln for ln in result.output.splitlines() if "journal.log" in ln]
    assert f"delete {exp.search_dir} and run `kdray resume {exp.root}`" in line
    assert "Traceback" not in result.output and not (exp.root / "tune").exists()
