"""The `kdray` command line: a thin layer over the package's functions."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.text import Text

app = typer.Typer(
    help="Knowledge-distillation grids for medical imaging (classification, segmentation, "
    "2D and 3D) on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)
LOG_WIDTH = 200


@app.callback()
def _wide_in_logs() -> None:
    # Written to a log, a pipe or Ray Jobs' logs, rich wraps at 80 columns and cuts paths and
    # warnings in two; there kdray prints 200 wide (COLUMNS, when set, still wins)
    for out in (console, err):
        out.width = None if out.is_terminal or "COLUMNS" in os.environ else LOG_WIDTH


SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a job field, e.g. --set train.epochs=1 (repeatable; values are YAML).",
        show_default=False,
    ),
]


def _error(message: str) -> None:
    err.print(Text.assemble(("error ", "bold red"), message), soft_wrap=True)


def _warn(message: str) -> None:
    err.print(Text.assemble(("warning ", "bold yellow"), message), soft_wrap=True)


def _load(job_file: Path, overrides: list[str] | None):
    from kdray.spec.job import JobError
    from kdray.spec.load import load_job

    try:
        return load_job(job_file, overrides or [])
    except JobError as exc:
        for line in exc.problems:  # lines about the file itself name it already
            _error(line if line.startswith(f"{job_file}:") else f"{job_file}: {line}")
        raise typer.Exit(2) from None


def _check_storage(job, job_file: Path) -> None:
    from kdray.spec.checks import storage_problems

    problems = storage_problems(job.storage)
    for line in problems:
        _error(f"{job_file}: {line}")
    if problems:
        raise typer.Exit(2)


def _data_errors(exc, where: str) -> None:
    for line in exc.problems:  # a line naming a data.* field needs no "data: " before it
        _error(f"{where}{'' if line.startswith('data.') else 'data: '}{line}")
    raise typer.Exit(2) from None


def _decode_pixels(job, job_file: Path):
    """Decode every image into the cache `kdray run` reads (so the work is not repeated);
    on bad images, the folders this made are removed again."""
    from kdray.data import DataError, prepare_data
    from kdray.store.experiment import Experiment

    exp = Experiment.for_job(job)
    made = [p for p in (exp.data_dir, exp.root, exp.root.parent) if not p.exists()]
    try:
        with console.status(f"decoding every {_samples(job)[:-1]} (the cache `kdray run` reuses)"):
            return prepare_data(job.data, exp.data_dir)
    except DataError as exc:
        for folder in made:  # innermost first; only if still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        _data_errors(exc, f"{job_file}: ")


@app.command()
def validate(
    job_file: Path,
    set_: SetOption = None,
    quick: Annotated[
        bool, typer.Option(help="Check the file lists only, without decoding the images.")
    ] = False,
) -> None:
    """Check a job file, its storage and its data: exit 0, or 2 and one line per problem.

    Every image (or volume) is decoded, unless --quick."""
    job = _load(job_file, set_)
    _check_storage(job, job_file)
    from kdray.data import DataError, data_notes, data_task, data_warnings, open_sources
    from kdray.data.cache import load_targets
    from kdray.grid.progress import fitted_lines
    from kdray.spec.describe import band_warnings, counted, job_warnings, study_lines
    from kdray.spec.fit import batch_problems
    from kdray.spec.job import task_problems
    from kdray.spec.plan import make_plan
    from kdray.tasks import get_task

    try:
        classes, sources = open_sources(job.data)
        task = data_task(job.data, sources)
    except DataError as exc:
        _data_errors(exc, f"{job_file}: ")
    train_labels = getattr(sources["train"], "labels", None)
    problems = task_problems(job, task) + batch_problems(
        job, train_labels, len(sources["train"]), task
    )
    for line in problems:
        _error(f"{job_file}: {line}")
    if problems:
        raise typer.Exit(2)
    weights = _check_weights(job, job_file, set_, listed=True)
    info = None if quick else _decode_pixels(job, job_file)
    if info is not None:
        targets = load_targets(info.path, "train")
        unlearnable = get_task(info.task).train_problems(targets, info.classes, _samples(job))
        for line in unlearnable:
            _error(f"{job_file}: {line}")
        if unlearnable:
            raise typer.Exit(2)
    plan = make_plan(job, {model: local.sha256 for model, local in weights.items()})
    teachers, students = plan.stage("teacher"), plan.stage("student")
    console.print(
        f"[green]ok[/green] {job_file}: job {job.name!r}, "
        f"{counted(len(job.studies), 'study', 'studies')}, "
        f"{counted(len(job.seeds), 'seed')}: {counted(len(teachers), 'teacher run')} + "
        f"{counted(len(students), 'student run')}"
        + (f" + {counted(len(plan.searches), 'searched cell')}" if plan.searches else ""),
        highlight=False,
        soft_wrap=True,
    )
    sizes = info.counts if info else {split: len(source) for split, source in sources.items()}
    counts = ", ".join(f"{split} {size}" for split, size in sizes.items())  # as decoded
    described = f"data: {job.data.kind}, {task.replace('_', '-')}, {len(classes)} "
    described += f"{get_task(task).outputs}, {counts} {_samples(job)}"
    for line in fitted_lines(described, console.width):
        console.print(line, highlight=False, soft_wrap=True)
    notes = [f"data: {note}" for note in data_notes(sources)]
    for line in [*notes, *study_lines(job, plan), checked_line(info, _samples(job))]:
        for part in fitted_lines(line, console.width):
            console.print(part, highlight=False, soft_wrap=True)
    for line in data_warnings(classes, sources):
        _warn(f"{job_file}: data: {line}")
    # what `kdray run` warns of too (a band needs the decoded validation labels)
    bands = band_warnings(job, info) if info else []
    for warning in bands + job_warnings(job, len(classes), train_labels):
        _warn(f"{job_file}: {warning}")


def _weights_command(job_file: Path, overrides: list[str] | None) -> str:
    import shlex

    return shlex.join(["kdray", "weights", str(job_file), *(f"--set={o}" for o in overrides or [])])


def _check_weights(job, job_file: Path, overrides: list[str] | None, listed: bool = False):
    """The job's pretrained weights found here, by model; refused in one line (exit 2) when
    some are missing. `listed`: also one line per weight, present or missing."""
    from kdray.tasks.models import file_problems
    from kdray.tasks.weights import find_all, missing_line

    where = job.weights_caches()
    wanted = job.weights_sources()
    _check_cache(job, job_file, where, wanted)
    found, missing = find_all(wanted, where)
    for model, source in wanted.items() if listed else ():
        local = found.get(model)
        state = f"present, {_size(local.size)}, sha256 {local.sha256}" if local else "missing"
        console.print(f"weights: {model} {source.label}: {state}", highlight=False, soft_wrap=True)
    if missing:
        _error(f"{job_file}: {missing_line(missing, where, _weights_command(job_file, overrides))}")
        raise typer.Exit(2)
    misfits = file_problems(found)  # another model's weights: refused before Ray starts
    for line in misfits:
        _error(f"{job_file}: {line}")
    if misfits:
        raise typer.Exit(2)
    return found


def _check_cache(job, job_file: Path, where, wanted) -> None:
    """A weights cache that cannot be a folder: one line, exit 2 (only if weights are needed)."""
    from kdray.tasks.weights import cache_problem

    problem = cache_problem(where, job.weights_cache) if wanted else None
    if problem:
        _error(f"{job_file}: {problem}")
        raise typer.Exit(2)


def _size(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


@app.command()
def weights(job_file: Path, set_: SetOption = None) -> None:
    """Fetch the pretrained weights JOB_FILE needs, on a machine with network (a login node).

    Each goes into the weights cache; its name, tag, size and sha256 are printed."""
    from kdray.tasks.weights import WeightsError
    from kdray.tasks.weights_fetch import fetch

    job = _load(job_file, set_)
    wanted = job.weights_sources()
    if not wanted:
        console.print(f"{job_file}: no model starts from pretrained weights", highlight=False)
        return
    where = job.weights_caches()
    _check_cache(job, job_file, where, wanted)
    console.print(f"cache: {where.describe()}", highlight=False, soft_wrap=True)
    failed = 0
    for model, source in wanted.items():
        try:
            local, fetched = fetch(source, where)
        except WeightsError as exc:
            _error(f"{job_file}: {exc}")
            failed += 1
            continue
        how = "downloaded" if fetched else "local file" if source.file else "already cached"
        console.print(
            f"{model}  {source.label}  {_size(local.size)}  sha256 {local.sha256}  {how}",
            highlight=False,
            soft_wrap=True,
        )
    if failed:
        raise typer.Exit(2)


def _samples(job) -> str:
    """What the job's data holds: images, or volumes (spatial rank 3)."""
    return "volumes" if job.data.spatial_rank == 3 else "images"


def checked_line(info, samples: str = "images") -> str:
    """What `validate` checked, so that "ok" promises no more than that (`samples`: images or
    volumes)."""
    checked = (
        "checked: the job's fields, models, pretrained weights (present here), storage and "
        "data file lists"
    )
    if info is None:
        return f"{checked}, but not the pixels (--quick): `kdray run` decodes them"
    skipped = sum(info.extra.get("skipped", {}).values())
    skipped += sum(info.extra.get("dropped_rows", {}).values())
    named = info.extra.get("skipped_files", []) + info.extra.get("dropped_files", [])
    shown = "; ".join(named[:3]) + ("; ..." if len(named) > 3 else "")
    note = f", {skipped} left out (on_bad_image: skip): {shown}" if skipped else ""
    decoded = f"decoded every {samples[:-1]}{note} into {info.path}"
    return f"{checked}, and {decoded} (kdray run reuses it)"


@app.command()
def run(
    job_file: Path,
    set_: SetOption = None,
    address: Annotated[
        str | None,
        typer.Option(help="Join a running Ray cluster (e.g. auto) instead of a local Ray."),
    ] = None,
    verbose: Annotated[bool, typer.Option(help="Show Ray's own logs.")] = False,
) -> None:
    """Run the grid of JOB_FILE: teachers first, then students; results in Parquet."""
    job = _load(job_file, set_)
    _check_storage(job, job_file)
    weights = _check_weights(job, job_file, set_)  # before any folder or process exists
    _check_address(address)
    from kdray.store.experiment import Experiment, ExperimentError

    root = Experiment.for_job(job).root
    fresh = not root.exists()
    try:
        with _one_driver(root, create=True):  # before job.json is written: it may be running
            exp = Experiment.create(job, weights)
            try:
                _run(exp, job, address, verbose)
            except typer.Exit as exit_:
                if exit_.exit_code == 2 and fresh and not exp.started_runs():
                    shutil.rmtree(root, ignore_errors=True)  # refused before any run: no trace
                raise
    except ExperimentError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None


def _check_address(address: str | None) -> None:
    """A cluster to join must answer before any experiment folder is made or opened."""
    if not address:
        return
    from kdray.grid.local_ray import ClusterError, check_address

    try:
        with console.status(f"checking the Ray cluster at {address}"):
            check_address(address)
    except ClusterError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None


@contextlib.contextmanager
def _one_driver(root: Path, create: bool = False):
    """Be the experiment folder's one driver (`kdray.store.lock`); a second `kdray run` or
    `resume` of the same experiment exits 2, naming the first, and changes nothing."""
    from kdray.store.experiment import ExperimentError
    from kdray.store.lock import GridBusy, hold_driver

    if create:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ExperimentError(
                f"storage: cannot create the experiment folder {root} ({exc.strerror}); "
                "set storage to a writable folder"
            ) from None
    try:
        with hold_driver(root):
            yield
    except GridBusy as exc:
        _error(str(exc))
        raise typer.Exit(2) from None


def _run(exp, job, address: str | None, verbose: bool) -> None:
    from kdray.export.write import write_tables
    from kdray.grid.local_ray import shutdown_ray
    from kdray.grid.signals import sigterm_as_ctrl_c
    from kdray.grid.teacher_checks import weak_teacher_lines
    from kdray.results.tables import read_trials
    from kdray.store.versions import resume_warning

    console.print(f"experiment: {exp.root}")
    changed = resume_warning(exp.root)  # a resumed (or re-run) experiment, other packages
    if changed:
        _warn(changed)
    with sigterm_as_ctrl_c():
        try:
            report = _run_grid(exp, job, address, verbose)
        finally:  # before the tables: Ray's processes are not waited for at exit
            shutdown_ray()
    trials = read_trials(exp).to_pandas()
    weak = weak_teacher_lines(trials, report.data) if report.data else []
    print_closing_tables(trials, list(job.studies), weak, exp.plan().searches.values())
    summary = write_tables(exp, trials, list(job.studies))
    console.print(f"\nresults: {exp.results_dir / 'trials.parquet'}", soft_wrap=True)
    console.print(f"tables:  {summary} (every table in full)", soft_wrap=True)
    console.print(f"export:  kdray export {exp.root} --out results/", soft_wrap=True)
    if not report.ok:
        err.print(f"[red]{len(report.failed)} run(s) failed[/red]:")
        for run_id, error in report.failed.items():
            err.print(f"  {run_id}: {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _run_grid(exp, job, address: str | None, verbose: bool):
    """The grid run, its refusals one line each (exit 2); stopped by Ctrl-C (exit 130) or
    SIGTERM (143): finished runs kept, and how to resume."""
    from kdray.data import DataError
    from kdray.grid.local_ray import ClusterError
    from kdray.grid.run import run_experiment
    from kdray.grid.signals import EXIT_CODE, terminated
    from kdray.grid.tune import GridInterrupted, ResourceError
    from kdray.results.tables import write_results
    from kdray.spec.job import JobError
    from kdray.store.experiment import ExperimentError
    from kdray.store.lock import GridBusy
    from kdray.tasks.weights import WeightsError

    try:
        return run_experiment(exp, job, address=address, verbose=verbose, console=console)
    except (ResourceError, GridBusy, ExperimentError, WeightsError, ClusterError) as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    except JobError as exc:  # what the data's task cannot give (known once it is read)
        for line in exc.problems:
            _error(line)
        raise typer.Exit(2) from None
    except DataError as exc:
        _data_errors(exc, "")
    except (KeyboardInterrupt, GridInterrupted):
        write_results(exp)
        how = "stopped (SIGTERM)" if terminated() else "interrupted"
        err.print(Text.assemble((f"\n{how}", "yellow"), "; finished runs are kept. Continue with:"))
        err.print(f"  kdray resume {exp.root}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_CODE if terminated() else 130) from None


def print_closing_tables(
    trials, studies: list[str], teacher_warnings: list[str] = (), searches=()
) -> None:
    """The tables a finished grid ends with, fitted to the terminal's (or `COLUMNS`') width;
    `teacher_warnings` under the teachers' and the KD gain tables; `searches`: the plan's
    searched cells."""
    from kdray.export.terminal import closing_output

    for part in closing_output(trials, studies, console.width, teacher_warnings, searches):
        console.print(part)


AddressOption = Annotated[
    str, typer.Option(help="The cluster's dashboard, e.g. http://127.0.0.1:8265 (SSH tunnel).")
]


@app.command()
def submit(
    job_file: Path,
    address: AddressOption = "http://127.0.0.1:8265",
    set_: SetOption = None,
    python: Annotated[
        str, typer.Option(help="Python on the head that has kdray installed (see cluster.yaml).")
    ] = "python",
) -> None:
    """Submit the grid of JOB_FILE to a running Ray cluster (Ray Jobs API); prints its id."""
    from kdray.grid.submit import SubmitError
    from kdray.grid.submit import submit as do_submit
    from kdray.spec.job import JobError

    try:
        submission_id = do_submit(job_file, set_ or [], address, Path.cwd(), python)
    except JobError as exc:
        for line in exc.problems:
            _error(line)
        raise typer.Exit(2) from None
    except SubmitError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    except (ConnectionError, RuntimeError) as exc:
        _error(f"cannot reach the Ray Jobs API at {address}: {exc}")
        raise typer.Exit(2) from None
    console.print(submission_id, highlight=False)
    err.print(
        f"follow it:  kdray logs {submission_id} --address {address} --follow\n"
        f"stop it:    kdray stop {submission_id} --address {address}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def logs(
    submission_id: str,
    address: AddressOption = "http://127.0.0.1:8265",
    follow: Annotated[bool, typer.Option(help="Keep printing until the job ends.")] = False,
) -> None:
    """Print the logs of a submitted grid."""
    import asyncio

    jobs = _jobs_client(address)

    async def tail() -> None:
        async for chunk in jobs.tail_job_logs(submission_id):
            console.out(chunk, end="", highlight=False)

    with _jobs_api(address, submission_id):
        if not follow:
            console.out(jobs.get_job_logs(submission_id), end="", highlight=False)
            return
        asyncio.run(tail())
        console.print(f"status: {jobs.get_job_status(submission_id)}")


def _jobs_client(address: str):
    from kdray.grid.submit import SubmitError, client

    try:
        return client(address)
    except SubmitError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None


@contextlib.contextmanager
def _jobs_api(address: str, submission_id: str):
    """A request the Ray Jobs API refused (an unknown id) or lost (the cluster went away)."""
    try:
        yield
    except typer.Exit:  # a RuntimeError too: the client's own refusal, already said
        raise
    except (RuntimeError, ConnectionError) as exc:
        _error(f"{submission_id} at {address}: {str(exc).strip().splitlines()[0][:300]}")
        raise typer.Exit(2) from None


@app.command()
def stop(submission_id: str, address: AddressOption = "http://127.0.0.1:8265") -> None:
    """Stop a submitted grid; `kdray resume` (or submitting it again) continues it later."""
    with _jobs_api(address, submission_id):
        stopped = _jobs_client(address).stop_job(submission_id)
    console.print(f"{submission_id}: {'stopping' if stopped else 'already finished'}")


@app.command()
def resume(
    experiment_dir: Path,
    address: Annotated[
        str | None, typer.Option(help="Join a running Ray cluster instead of a local Ray.")
    ] = None,
    verbose: Annotated[bool, typer.Option(help="Show Ray's own logs.")] = False,
) -> None:
    """Continue an interrupted or partly failed grid; finished runs are kept.

    Runs that stopped without a result (interrupted, crashed) continue from their last
    checkpoint, each student once its teacher has finished."""
    from kdray.store.experiment import Experiment, ExperimentError

    try:
        exp = Experiment.open(experiment_dir)
        _check_address(address)
        with _one_driver(exp.root):
            _run(exp, job=exp.job(), address=address, verbose=verbose)
    except ExperimentError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None


@app.command()
def status(experiment_dir: Path) -> None:
    """Per stage: finished / running / failed / interrupted / pending runs, and every run."""
    from rich.table import Table

    from kdray.store.experiment import Experiment, ExperimentError
    from kdray.store.status import STATES, grid_alive, stage_counts, status_rows, unreadable_runs

    try:
        exp = Experiment.open(experiment_dir)
        rows = status_rows(exp)
        alive = grid_alive(exp)
        unreadable = unreadable_runs(exp)
    except ExperimentError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    console.print(f"experiment: {exp.root} ({'running' if alive else 'not running'})")
    for stage, counts in stage_counts(rows).items():
        parts = ", ".join(f"{counts[s]} {s}" for s in STATES if counts[s])
        console.print(f"{stage:<8} {sum(counts.values())} runs: {parts or 'none'}")
    table = Table("stage", "run (runs/<run>/)", "teacher", "state", "best val", "attempts")
    colours = {"finished": "green", "failed": "red", "running": "cyan", "interrupted": "yellow"}
    colours["stopped"] = "blue"
    colours["unreadable"] = "red"
    for r in rows:
        best = "" if r["best_val"] is None else f"{r['best_val']:.3f}"
        state = f"[{colours.get(r['state'], 'white')}]{r['state']}"
        table.add_row(
            r["stage"],
            r["trial_id"],
            r["teacher"],
            state,
            best,
            str(r["attempts"]),
        )
    console.print(table)  # piped or redirected: 200 wide (`_wide_in_logs`), no name cut short
    for message in unreadable.values():
        _error(message)
    if unreadable:
        raise typer.Exit(2)


@app.command()
def export(
    experiment_dir: Path,
    out: Annotated[str, typer.Option(help="Folder to write the tables into.")] = "results",
    onnx: Annotated[
        list[str] | None,
        typer.Option(
            "--onnx",
            help="Also write onnx/<RUN_ID>.onnx, checked against PyTorch (repeatable).",
            metavar="RUN_ID",
            show_default=False,
        ),
    ] = None,
    onnx_pareto: Annotated[
        bool,
        typer.Option(help="Also write the Pareto-optimal KD students and baselines (vs MACs)."),
    ] = False,
) -> None:
    """Write an experiment's tables: Parquet, CSV, Markdown and report.html (and ONNX models).

    With --onnx / --onnx-pareto, deployable ONNX files of its models too."""
    from kdray.export.onnx import DeployError, check_exportable
    from kdray.export.write import export as do_export
    from kdray.results.cost_ratios import experiment_pareto_runs
    from kdray.store.experiment import Experiment, ExperimentError
    from kdray.store.status import unfinished_line

    if not out.strip():  # Path("") would be the working directory
        _error("--out: empty; give the folder to write the tables into, e.g. --out results")
        raise typer.Exit(2)
    try:
        exp = Experiment.open(experiment_dir)
        runs = list(onnx or [])  # checked before anything is written
        if onnx_pareto:
            runs += experiment_pareto_runs(exp)
        check_exportable(exp, runs)
        written = do_export(experiment_dir, Path(out))
        for path in written.values():
            console.print(f"wrote {path}", highlight=False)
        unfinished = unfinished_line(exp)
        if unfinished:
            _warn(f"{exp.root}: {unfinished}")
        for run_id in dict.fromkeys(runs):
            _export_onnx(experiment_dir, run_id, Path(out))
    except (ExperimentError, DeployError) as exc:
        _error(str(exc))
        raise typer.Exit(2) from None


def _export_onnx(experiment_dir: Path, run_id: str, out: Path) -> None:
    from kdray.export.onnx import DeployError, export_onnx

    try:
        result = export_onnx(experiment_dir, run_id, out)
    except DeployError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    console.print(
        f"wrote {result.path}: max |Δp| {result.max_abs_diff:.1e} against PyTorch on "
        f"{result.images} validation {result.unit} ({100 * result.agreement:.3f}% of decisions "
        "agree); onnxruntime batch-1 latency "
        f"{result.latency_ms:.2f} ms (median)",
        highlight=False,
        soft_wrap=True,
    )


def main() -> None:
    """The `kdray` command (and `python -m kdray`): the app, then `exit_now` with its exit
    code. An exception other than an exit is raised as Python would (a traceback, exit 1)."""
    try:
        app()
        code = 0
    except SystemExit as exc:
        code = exc.code
    if code is None:
        code = 0
    elif not isinstance(code, int):  # as Python does with `sys.exit("message")`
        print(code, file=sys.stderr)
        code = 1
    exit_now(code)


def exit_now(code: int) -> NoReturn:
    """Exit as Python does, less its last step: with torch, timm and Ray loaded, freeing every
    module and running the C++ libraries' destructors takes 1.5-2 s at the end of every
    command and writes nothing. What a normal exit does before that is done here too: other
    non-daemon threads are waited for and the atexit handlers run (logs flushed, temporary
    folders removed, Ray disconnected), then stdout and stderr are flushed."""
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe, a closed stream
            stream.flush()
    os._exit(code)
