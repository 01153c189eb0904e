"""The grid's run order (kdray.grid.schedule.RunQueue) without Ray: Tune only calls suggest() and
on_trial_complete(), so the tests play Tune's part."""

import json
import signal
import subprocess
import sys
from types import SimpleNamespace

from ray.tune.search import Searcher

from kdray.grid.ledger import RunLedger
from kdray.grid.packing import Pack
from kdray.grid.schedule import RunQueue, close_ledger_on_interrupt, ledger_packs
from kdray.spec.job import Job
from kdray.spec.plan import make_plan
from kdray.store.run_folder import RunFolder
from kdray.train.more_runs import WAIT
from tests.conftest import tiny_job_dict

STUDIES = {
    "normal": {"teachers": ["resnet10t", "resnet18"], "students": ["test_resnet"]},
    "reverse": {"teachers": ["test_resnet"], "students": ["resnet10t"]},
}


def make_queue(tmp_path, max_concurrent=2):
    plan = make_plan(Job.model_validate(tiny_job_dict(tmp_path, studies=STUDIES)))
    status: dict[str, str] = {}
    packs = [Pack((run,)) for run in plan.runs.values()]  # one run per trial: the order alone
    ledger = RunLedger(*ledger_packs(packs), max_concurrent=max_concurrent, run_status=status.get)
    queue = RunQueue(ledger, packs, trial_config=lambda pack, _: {"run": pack.runs[0].to_dict()})
    return plan, queue, status


def student_teachers(plan) -> dict[str, str]:
    """KD run id -> its teacher run id (these studies have one teacher per student)."""
    out = {}
    for run in plan.runs.values():
        if run.teacher_runs:
            (out[run.run_id],) = run.teacher_runs
    return out


def suggest(queue, trial_id):
    config = queue.suggest(trial_id)
    return config["run"]["run_id"] if isinstance(config, dict) else config


def test_teachers_first_students_as_soon_as_their_own_teacher_finished(tmp_path):
    plan, queue, status = make_queue(tmp_path, max_concurrent=10)
    students = student_teachers(plan)
    teachers = set(students.values())
    assert len(teachers) >= 2 and students

    started = []
    while (run_id := suggest(queue, f"t{len(started)}")) not in (None, Searcher.FINISHED):
        started.append(run_id)
    assert set(started[: len(teachers)]) == teachers  # teachers lead
    assert not set(started) & set(students)  # every student waits: no teacher finished yet
    assert run_id is None  # ... and the queue asks Tune to come back, it is not finished

    first = started.index(next(iter(teachers)))
    status[started[first]] = "finished"
    queue.on_trial_complete(f"t{first}")
    mine = {s for s, t in students.items() if t == started[first]}
    after = []
    while (run_id := suggest(queue, f"u{len(after)}")) not in (None, Searcher.FINISHED):
        after.append(run_id)
    assert set(after) == mine  # other teachers still train, their students still wait


def test_concurrency_cap_counts_live_trials(tmp_path):
    _, queue, status = make_queue(tmp_path, max_concurrent=2)
    a, b = suggest(queue, "a"), suggest(queue, "b")
    assert a and b and suggest(queue, "c") is None
    status[a] = "finished"
    queue.on_trial_complete("a")
    assert suggest(queue, "c") not in (None, Searcher.FINISHED)


def test_with_every_slot_taken_tune_s_asking_does_not_reach_the_ledger(tmp_path):
    """Tune asks at every step of its loop; while `max_concurrent` trials are live the queue
    answers itself, and asks the ledger again once one of them completed."""
    _, queue, status = make_queue(tmp_path, max_concurrent=2)
    asked = []
    next_pack = queue.ledger.next_pack
    queue.ledger.next_pack = lambda trial_id: asked.append(trial_id) or next_pack(trial_id)
    queue.max_concurrent = 2
    a, b = suggest(queue, "a"), suggest(queue, "b")
    assert a and b
    assert [suggest(queue, f"c{i}") for i in range(5)] == [None] * 5
    assert asked == ["a", "b"]
    status[a] = "finished"
    queue.on_trial_complete("a")
    assert suggest(queue, "c") not in (None, Searcher.FINISHED)
    assert asked == ["a", "b", "c"]


def test_students_of_a_failed_teacher_are_blocked_and_the_queue_finishes(tmp_path):
    plan, queue, status = make_queue(tmp_path, max_concurrent=100)
    trials = {}
    while (run_id := suggest(queue, f"t{len(trials)}")) not in (None, Searcher.FINISHED):
        trials[f"t{len(trials)}"] = run_id
    for trial_id in trials:  # every teacher errors out (no summary)
        queue.on_trial_complete(trial_id, error=True)
    assert suggest(queue, "z") == Searcher.FINISHED
    assert queue.blocked() == student_teachers(plan)


def test_a_teacher_whose_summary_says_failed_blocks_its_students(tmp_path):
    plan, queue, status = make_queue(tmp_path, max_concurrent=100)
    trials = {}
    while (run_id := suggest(queue, f"t{len(trials)}")) not in (None, Searcher.FINISHED):
        trials[f"t{len(trials)}"] = run_id
    for trial_id, run_id in trials.items():  # the worker wrote status "failed" (missed band)
        status[run_id] = "failed"
        queue.on_trial_complete(trial_id)
    assert suggest(queue, "z") == Searcher.FINISHED
    assert set(queue.blocked()) == set(student_teachers(plan))


def test_state_tune_saves_is_readable_json(tmp_path):
    _, queue, _ = make_queue(tmp_path)
    first = suggest(queue, "a")
    queue.save(str(tmp_path / "queue.json"))
    saved = json.loads((tmp_path / "queue.json").read_text())
    assert saved["live"] == {"a": [first]} and [first] not in saved["waiting"]


def test_students_left_waiting_by_an_interruption_are_not_blocked(tmp_path):
    plan, queue, status = make_queue(tmp_path, max_concurrent=100)
    first = suggest(queue, "a")
    status[first] = "finished"
    queue.on_trial_complete("a")
    # Ctrl-C now: Tune stops asking; the students of `first` never started, but not because
    # their teacher failed
    assert queue.blocked() == {}


def test_a_failed_teacher_takes_its_students_out_of_a_pack_and_the_rest_still_start(tmp_path):
    plan = make_plan(Job.model_validate(tiny_job_dict(tmp_path, studies=STUDIES)))
    runs = list(plan.runs.values())
    teachers = [r for r in runs if r.stage == "teacher"]
    students = [r for r in runs if r.teacher_runs]
    status: dict[str, str] = {}
    packs = [Pack(tuple(teachers)), Pack(tuple(students))]  # every KD student in one pack
    ledger = RunLedger(*ledger_packs(packs), max_concurrent=2, run_status=status.get)
    queue = RunQueue(
        ledger, packs, trial_config=lambda pack, _: {"runs": [r.run_id for r in pack.runs]}
    )
    assert queue.suggest("t")["runs"] == [t.run_id for t in teachers]
    bad = students[0].teacher_runs[0]
    for teacher in teachers:
        status[teacher.run_id] = "failed" if teacher.run_id == bad else "finished"
    queue.on_trial_complete("t")
    left = queue.suggest("s")["runs"]
    assert left == [s.run_id for s in students if bad not in s.teacher_runs] and left
    assert queue.blocked() == {s.run_id: bad for s in students if bad in s.teacher_runs}


def stealing_ledger(tmp_path, runs_per_fit=8, seeds=(0,)):
    """The teachers in one pack, their students in another (not ready yet)."""
    raw = tiny_job_dict(tmp_path, studies=STUDIES, seeds=list(seeds))
    plan = make_plan(Job.model_validate(raw))
    runs = list(plan.runs.values())
    teachers = [r for r in runs if r.stage == "teacher"]
    students = [r for r in runs if r.teacher_runs]
    status: dict[str, str] = {}
    ledger = RunLedger(
        *ledger_packs([Pack(tuple(teachers)), Pack(tuple(students))]),
        max_concurrent=2,
        runs_per_fit=runs_per_fit,
        run_status=status.get,
        attempts=lambda run_id: 7,
    )
    return ledger, ids(teachers), ids(students), status


def ids(runs) -> list[str]:
    return [r.run_id for r in runs]


def test_a_trial_done_with_its_pack_takes_ready_runs_and_waits_for_coming_ones(tmp_path):
    ledger, teachers, students, status = stealing_ledger(tmp_path)
    assert ledger.next_pack("a") == tuple(teachers)
    assert ledger.next_pack("b") is None  # the students wait on teachers trial a trains
    first = teachers[0]
    mine = [s for s in students if ledger.teachers[s] == (first,)]
    assert mine and len(mine) < len(students)
    status[first] = "finished"
    assert ledger.more_runs("a", 0) == [(mine[0], 7)]  # taken, with its earlier attempts
    assert ledger.more_runs("a", 0) == [(mine[0], 7)]  # the same answer again (ranks, restarts)
    for t in teachers:
        status[t] = "finished"
    taken = [mine[0]]
    while (got := ledger.more_runs("a", len(taken))) != []:
        assert got != WAIT
        taken += [run for run, _ in got]
    assert sorted(taken) == sorted(students)
    assert ledger.next_pack("b") == Searcher.FINISHED  # nothing left to start a trial for
    assert ledger.given()["a"] == [*teachers, *taken]


def test_a_trial_waits_while_the_runs_left_wait_on_another_trial_s_teachers(tmp_path):
    ledger, teachers, students, status = stealing_ledger(tmp_path)
    ledger.next_pack("a")  # the teachers
    ledger.live["b"] = ()  # a second trial, done with its pack
    assert ledger.more_runs("b", 0) == WAIT  # a's teachers will make students ready
    ledger.live["c"] = ()
    ledger.wait_limit_s = 0.0  # ... but not for ever: a's workers may need c's resources
    assert ledger.more_runs("c", 0) == []
    ledger.wait_limit_s = 60.0
    for t in teachers:
        status[t] = "failed"
    ledger.trial_ended("a")
    assert ledger.more_runs("b", 0) == []  # nothing left can ever come: end the fit
    assert set(ledger.blocked()) == set(students)


def test_a_fit_takes_no_more_than_runs_per_fit_and_an_erring_trial_fails_what_it_took(tmp_path):
    ledger, teachers, students, status = stealing_ledger(tmp_path, runs_per_fit=len(STUDIES) + 2)
    ledger.next_pack("a")
    for t in teachers:
        status[t] = "finished"
    room = ledger.runs_per_fit - len(teachers)
    taken = [ledger.more_runs("a", i)[0][0] for i in range(room)]
    assert ledger.more_runs("a", room) == []  # full: the rest start in a new trial
    assert ledger.next_pack("b") == tuple(s for s in students if s not in taken)
    status[taken[0]] = "finished"
    ledger.trial_ended("a")  # erred
    assert ledger.failed == set(taken[1:])  # what it finished stays finished


def test_a_fit_without_a_limit_takes_every_ready_run(tmp_path):
    """`runs_per_fit=None` (`runs_per_trial: auto` packing short runs): one fit trains all the
    students, more than the 8 runs a pack holds, and no second fit is needed."""
    ledger, teachers, students, status = stealing_ledger(tmp_path, None, seeds=(0, 1, 2))
    assert ledger.next_pack("a") == tuple(teachers)
    for t in teachers:
        status[t] = "finished"
    taken = []
    while (got := ledger.more_runs("a", len(taken))) != []:
        taken += [run for run, _ in got]
    assert len(taken) == len(students) > 8


def test_a_stopped_sample_fills_a_fit_by_the_share_of_the_epochs_it_trained(tmp_path):
    """runs_per_fit 2, 10-epoch runs: after one full run, stopped samples of 1, 3 and 5 epochs
    (0.9 of a run in all) still leave room; one more run fills the fit."""
    samples = ["s1", "s3", "s5", "full", "next"]
    ledger = RunLedger(
        [("t",), tuple(samples)], {s: () for s in samples}, tmp_path,
        max_concurrent=1, runs_per_fit=2, full_epochs=10,
    )  # fmt: skip
    assert ledger.next_pack("a") == ("t",)
    RunFolder(tmp_path / "runs" / "t").write_summary({"status": "finished", "epochs": 10})
    for call, (run, epochs) in enumerate([("s1", 1), ("s3", 3), ("s5", 5), ("full", 10)]):
        assert ledger.more_runs("a", call) == [(run, 0)]
        status = "finished" if run == "full" else "stopped"
        RunFolder(tmp_path / "runs" / run).write_summary({"status": status, "epochs": epochs})
    assert ledger.more_runs("a", 4) == []  # 1 + 0.9 + 1 runs: full; `next` starts a new fit
    ledger.trial_ended("a")
    assert ledger.next_pack("b") == ("next",) and not ledger.failed


def test_the_ledger_reads_a_run_s_state_once_a_call_and_never_again_once_it_ended():
    """Many waiting students share a teacher: each call reads the teacher's folder once (a round
    trip each on a shared file system, and trials waiting for teachers ask every 0.5 s), and a
    run that ended is not read again."""
    students = [f"s{i}" for i in range(200)]
    reads: list[str] = []
    states = {"t": None}

    def read(run_id: str) -> str | None:
        reads.append(run_id)
        return states.get(run_id)

    ledger = RunLedger(
        [("t",), tuple(students)],
        {s: ("t",) for s in students},
        max_concurrent=2,
        runs_per_fit=500,
        run_status=read,
    )
    assert ledger.next_pack("a") == ("t",)
    assert ledger.next_pack("b") is None and ledger.more_runs("a", 0) == WAIT
    assert reads.count("t") == 3  # one read per call, not one per waiting student
    states["t"] = "finished"
    assert ledger.next_pack("b") == tuple(students)
    assert [ledger.next_pack("c"), reads.count("t")] == [Searcher.FINISHED, 4]


def test_the_ledger_reads_run_folders_and_its_module_loads_no_torch(tmp_path):
    from kdray.grid.ledger import run_status

    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    assert run_status(tmp_path, "a") is None
    (run / "failure.json").write_text(json.dumps({"error": "boom"}))
    assert run_status(tmp_path, "a") == "failed"
    (run / "summary.json").write_text(json.dumps({"status": "finished"}))
    assert run_status(tmp_path, "a") == "finished"
    (run / "attempts.json").write_text(json.dumps({"attempts": 3}))
    assert RunLedger([("a",)], {}, tmp_path).attempts("a") == 3
    # the ledger's actor imports kdray.grid.ledger alone: it must start in about a second
    probe = "import sys, kdray.grid.ledger; print('torch' in sys.modules, 'timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_tune_creates_a_trial_per_slot_at_once_and_leaves_the_limit_to_the_ledger(tmp_path):
    """With a custom searcher Tune creates the next trial only once the last one runs (one
    pending trial), unless the searcher sits in a ConcurrencyLimiter: then as many as its
    limit. `TuneConfig.max_concurrent_trials` puts it there; RunQueue keeps its own limit."""
    from ray.tune.execution.tune_controller import _get_max_pending_trials
    from ray.tune.search import ConcurrencyLimiter, SearchGenerator

    plan, queue, _ = make_queue(tmp_path, max_concurrent=2)
    limited = ConcurrencyLimiter(queue, max_concurrent=2)
    assert _get_max_pending_trials(SearchGenerator(limited)) == 2
    assert _get_max_pending_trials(SearchGenerator(queue)) == 1  # what kdray had before
    # the limiter passes every call through: the ledger decides, and its answers are Tune's
    configs = [limited.suggest(f"t{i}") for i in range(3)]
    assert [isinstance(c, dict) for c in configs] == [True, True, False]  # two slots
    limited.on_trial_complete("t0")
    assert set(queue.ledger.live) == {"t1"}
    assert isinstance(limited.suggest("t3"), dict)  # the freed slot takes the next pack


def test_a_trial_driver_and_its_train_controller_load_no_model_library():
    """What a trial driver process imports (the trainable's module) and what Ray Train's
    controller unpickles (the worker loop, the trial's config): torch, but not timm nor
    torchvision (~2 s more per process on 2 cores); the worker imports them itself."""
    probe = (
        "import sys, kdray.grid.tune, kdray.train.trial; "
        "print(*(m in sys.modules for m in ('torch', 'timm', 'torchvision', 'albumentations')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False", "False", "False"]


def test_ctrl_c_closes_the_ledger_before_tune_stops_hooked_at_the_first_suggest(tmp_path):
    """Tune's SIGINT handler is in place once its loop asks for trials: the queue's `on_start`
    (run once, at the first suggest) wraps it so that Ctrl-C first closes the ledger (no worker
    takes another run in Tune's grace seconds), then stops Tune."""
    calls = []
    actor = SimpleNamespace(close=SimpleNamespace(remote=lambda: calls.append("ledger closed")))
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda sig, frame: calls.append("tune stops"))  # Tune's handler
    try:
        _, queue, _ = make_queue(tmp_path)
        starts = []
        queue.on_start = lambda: starts.append(
            close_ledger_on_interrupt(SimpleNamespace(actor=actor))
        )
        assert isinstance(queue.suggest("t0"), dict) and isinstance(queue.suggest("t1"), dict)
        assert len(starts) == 1
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
        assert calls == ["ledger closed", "tune stops"]
    finally:
        signal.signal(signal.SIGINT, before)


UNPICKLED: list[str] = []


def _unpickled(name: str) -> str:
    UNPICKLED.append(name)
    return name


class _PickledHandle:
    """Stands for a trial's pickled actor handle, and records when it is unpickled (a real
    handle imports its actor's module, torch and all, where it is unpickled)."""

    def __init__(self, name: str):
        self.name = name

    def __reduce__(self):
        return _unpickled, (self.name,)


def test_closing_the_ledger_kills_the_trials_running_then_and_any_that_start_after(
    tmp_path, monkeypatch
):
    """A stopping grid (Ctrl-C, SIGTERM, a resource wait over) stops its running trials at once:
    a trial blocked in its fit never stops by itself, and Tune would wait 10 s to kill it. The
    ledger keeps each trial's handle pickled, and unpickles it only to kill it."""
    import ray
    from ray import cloudpickle

    killed = []
    monkeypatch.setattr(ray, "kill", lambda actor, no_restart: killed.append(actor))
    UNPICKLED.clear()
    _, queue, _ = make_queue(tmp_path)
    ledger = queue.ledger
    for trial_id in ("t0", "t1"):
        queue.suggest(trial_id)
        ledger.trial_started(trial_id, cloudpickle.dumps(_PickledHandle(f"actor of {trial_id}")))
    ledger.trial_ended("t0")  # ended: its actor is Tune's to reuse or stop
    assert killed == [] and UNPICKLED == []
    ledger.close()
    assert killed == ["actor of t1"] and UNPICKLED == ["actor of t1"]
    ledger.trial_started("t2", cloudpickle.dumps(_PickledHandle("actor of t2")))  # just before
    assert killed == ["actor of t1", "actor of t2"]
