"""Bad inputs a hostile but honest user gives `kdray`: each must end in one clear message that
names the file or field and the next step, exit 2 (1 where a run legitimately failed), no
traceback, and no file damaged or left behind (issue 15). Only the one case that needs a run
that really fails starts Ray; every other case is refused before it."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from kdray.cli import app

runner = CliRunner()


# --- fixtures ---------------------------------------------------------------------------------


def make_images(root: Path, per_class: int = 8) -> Path:
    """root/<class>/<n>.png: two classes of small gray images (made once per test)."""
    if root.exists():
        return root
    rng = np.random.default_rng(0)
    for label in ("left", "right"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (12, 12), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


def job_dict(tmp_path: Path, **changes) -> dict:
    job = {
        "name": "bad",
        "storage": str(tmp_path / "runs"),
        "data": {
            "kind": "folder",
            "root": str(make_images(tmp_path / "images")),
            "image_size": 16,
            "split_by": {"valid": 0.25, "test": 0.25},
        },
        "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "augment": False},
        "studies": {"normal": {"teachers": ["resnet10t"], "students": ["test_resnet"]}},
        "seeds": [0],
        "resources": {"max_concurrent_trials": 1},
    }
    job.update(changes)
    return job


def write_job(tmp_path: Path, job: dict | None = None, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(job if job is not None else job_dict(tmp_path)))
    return path


def cli(*args, env: dict | None = None):
    """Invoke kdray; whatever the outcome, no Python traceback may reach the user."""
    result = runner.invoke(app, [str(a) for a in args], env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"traceback for {args}: {result.exception!r}\n{result.output}")
    assert "Traceback" not in result.output
    return result


def refused(*args, says: tuple[str, ...] = (), code: int = 2) -> str:
    """Run kdray expecting `code`; returns the error lines, which must contain each of `says`."""
    result = cli(*args)
    assert result.exit_code == code, result.output
    errors = "\n".join(line for line in result.output.splitlines() if line.startswith("error"))
    assert errors, result.output
    for text in says:
        assert text in errors, f"{text!r} not in:\n{result.output}"
    return errors


def experiment(tmp_path: Path, job: dict | None = None) -> Path:
    """An experiment folder as `kdray run` creates it, no run started."""
    from kdray.spec.load import parse_job
    from kdray.store.experiment import Experiment

    return Experiment.create(parse_job(job or job_dict(tmp_path))).root


def fake_finished_runs(root: Path) -> list[str]:
    """Give every run of the plan a finished summary and one epoch, as a grid would."""
    plan = json.loads((root / "plan.json").read_text())
    ids = [run["run_id"] for run in plan["runs"]]
    for run_id in ids:
        run_dir = root / "runs" / run_id
        run_dir.mkdir(parents=True)
        metrics = {f"{s}_acc": 0.5 for s in ("train", "val", "test")}
        (run_dir / "summary.json").write_text(
            json.dumps({"status": "finished", "epochs": 1.0, **metrics})
        )
        (run_dir / "attempts.json").write_text(json.dumps({"attempts": 1}))
        (run_dir / "epochs.jsonl").write_text(json.dumps({"epoch": 1, "val_acc": 0.5}) + "\n")
    return ids


def truncate_an_image(tmp_path: Path) -> Path:
    victim = tmp_path / "images" / "left" / "3.png"
    victim.write_bytes(victim.read_bytes()[:40])
    return victim


# --- 1: every run fails; weights that are not a checkpoint, or another model's -----------------


def test_weights_of_random_bytes_are_refused_before_any_run(tmp_path):
    weights = tmp_path / "noise.pth"
    weights.write_bytes(os.urandom(4096))
    job = write_job(tmp_path, job_dict(tmp_path, pretrained={"resnet10t": str(weights)}))
    for command in ("validate", "run"):
        errors = refused(command, job, says=("pretrained.resnet10t", "is not a PyTorch checkpoint"))
        assert "weights_only=False" not in errors
    assert not (tmp_path / "runs").exists()


def test_export_of_a_never_run_or_all_failed_experiment_writes_tables(tmp_path):
    root = experiment(tmp_path)
    out = tmp_path / "out"
    result = cli("export", root, "--out", out)
    assert result.exit_code == 0, result.output
    assert (out / "teachers.md").read_text().startswith("# Teachers")
    for run_id in json.loads((root / "plan.json").read_text())["runs"]:
        failure = root / "runs" / run_id["run_id"] / "failure.json"
        failure.parent.mkdir(parents=True)
        failure.write_text(json.dumps({"error": "it broke"}))
    result = cli("export", root, "--out", tmp_path / "out2")
    assert result.exit_code == 0, result.output
    assert "it broke" in (tmp_path / "out2" / "summary.md").read_text()


def test_weights_of_another_architecture_are_refused_before_any_run(tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    other = tmp_path / "other.pth"  # a real checkpoint, of another architecture
    torch.save(timm.create_model("resnet18").state_dict(), other)
    stranger = tmp_path / "stranger.safetensors"
    save_file({"encoder.weight": torch.zeros(3, 3)}, stranger)
    for weights, says in ((other, "shapes differ"), (stranger, "keys missing")):
        job = write_job(tmp_path, job_dict(tmp_path, pretrained={"resnet10t": str(weights)}))
        for command in ("validate", "run"):
            errors = refused(command, job, says=(f"pretrained.resnet10t: {weights}", says))
            assert "does not fit resnet10t" in errors and len(errors.splitlines()) == 1, errors
    assert not (tmp_path / "runs").exists()
    own = tmp_path / "own.pth"  # fine-tuned elsewhere: 2 classes, 1 channel; timm adapts both
    torch.save(timm.create_model("resnet10t", num_classes=2, in_chans=1).state_dict(), own)
    job = write_job(tmp_path, job_dict(tmp_path, pretrained={"resnet10t": str(own)}))
    result = cli("validate", job, "--quick")
    assert result.exit_code == 0, result.output


# A grid where no run finishes (exit 1, each failed run listed, the experiment still exports):
# tests/test_grid_e2e.py, on its failed-teacher grid.


# --- 2: a run refused before training locks nothing -------------------------------------------


def test_a_refused_first_run_leaves_no_folder_and_a_corrected_job_is_accepted(tmp_path):
    job = write_job(tmp_path)
    truncate_an_image(tmp_path)
    refused("run", job, says=("3.png", "on_bad_image: skip"))
    assert not (tmp_path / "runs" / "bad").exists()
    root = experiment(tmp_path, job_dict(tmp_path, train={"epochs": 3}))  # an earlier attempt
    errors = refused("run", job, says=("3.png",))
    assert "already holds a different job" not in errors
    assert json.loads((root / "job.json").read_text())["train"]["epochs"] == 1


# --- 3: damaged files in an experiment folder -------------------------------------------------


@pytest.mark.parametrize(
    ("name", "commands", "says"),
    [
        ("job.json", ("resume", "export"), "kdray run JOB_FILE"),
        ("driver.json", ("status", "resume"), "delete it"),
    ],
)
def test_a_damaged_folder_file_is_named_with_what_to_do(tmp_path, name, commands, says):
    root = experiment(tmp_path)
    (root / name).write_text('{"truncated": ')
    for command in commands:
        args = (
            (command, root, "--out", tmp_path / "out") if command == "export" else (command, root)
        )
        refused(*args, says=(str(root / name), "is damaged", says))
    assert (root / name).read_text() == '{"truncated": '  # left for the user to judge
    assert not (tmp_path / "out").exists()


def test_a_damaged_plan_is_rebuilt_from_the_job(tmp_path):
    root = experiment(tmp_path)
    plan = (root / "plan.json").read_text()
    (root / "plan.json").write_bytes(b"\xff\x00garbage")
    result = cli("status", root)
    assert result.exit_code == 0, result.output
    assert (root / "plan.json").read_text() == plan


def test_an_unreadable_summary_is_shown_as_unreadable_not_interrupted(tmp_path):
    root = experiment(tmp_path)
    run_id = fake_finished_runs(root)[0]
    summary = root / "runs" / run_id / "summary.json"
    summary.write_text('{"status": "fini')
    result = cli("status", root)
    assert result.exit_code == 2 and "unreadable" in result.output
    assert "interrupted" not in result.output
    assert str(summary) in result.output and "kdray resume" in result.output
    refused("export", root, "--out", tmp_path / "out", says=(str(summary), "is damaged"))
    assert not (tmp_path / "out").exists()


def test_a_damaged_epoch_line_is_named(tmp_path):
    root = experiment(tmp_path)
    run_id = fake_finished_runs(root)[0]
    epochs = root / "runs" / run_id / "epochs.jsonl"
    epochs.write_text(epochs.read_text() + '{"epoch": 2, "val_ac\n')
    refused("export", root, "--out", tmp_path / "out", says=(f"line 2 of {epochs}", "delete"))
    assert cli("status", root).exit_code == 0  # status shows what it can


def test_truncated_tables_are_rebuilt_from_the_run_folders(tmp_path):
    root = experiment(tmp_path)
    fake_finished_runs(root)
    assert cli("export", root, "--out", tmp_path / "out").exit_code == 0
    for table in ("trials.parquet", "epochs.parquet"):
        path = root / "results" / table
        path.write_bytes(path.read_bytes()[:100])
    result = cli("export", root, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "0.500" in (tmp_path / "out" / "teachers.md").read_text()


# --- 4: storage -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("storage", "says"),
    [
        ("a_file", "is a file, not a folder"),
        ("a_file/below", "is a file, not a folder"),
        ("/proc/kdray", "virtual file system"),
        ("", "storage"),
        ("   ", "storage"),
    ],
)
def test_storage_that_cannot_hold_experiments_is_refused(tmp_path, storage, says, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("not a folder")
    job = write_job(tmp_path, job_dict(tmp_path, storage=storage))
    for command in ("validate", "run"):
        refused(command, job, says=(says,))
    assert (tmp_path / "a_file").read_text() == "not a folder"
    assert not (tmp_path / "bad").exists()


# --- 5: loading the job file ------------------------------------------------------------------


def test_a_key_given_twice_is_refused_not_silently_dropped(tmp_path):
    text = yaml.safe_dump(job_dict(tmp_path)) + "train: {epochs: 20}\n"
    (tmp_path / "job.yaml").write_text(text)
    refused("validate", tmp_path / "job.yaml", says=("duplicate key 'train'", "merge them"))


def test_anchors_and_merge_keys_are_not_duplicates(tmp_path):
    from kdray.spec.load import load_job

    job = job_dict(tmp_path)
    text = yaml.safe_dump({k: v for k, v in job.items() if k != "studies"})
    text += "studies:\n  normal: &normal {teachers: [resnet10t], students: [test_resnet]}\n"
    text += "  reverse: {<<: *normal, teachers: [test_resnet], students: [resnet10t]}\n"
    (tmp_path / "job.yaml").write_text(text)
    studies = load_job(tmp_path / "job.yaml").studies
    assert studies["reverse"].teachers == ["test_resnet"]  # a merged key may be overridden


def test_a_job_file_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_bytes(yaml.safe_dump(job_dict(tmp_path)).encode() + b"# caf\xe9\n")
    refused("validate", path, says=("not UTF-8", "save it as UTF-8"))


def test_an_augmentation_argument_with_a_typo_is_refused(tmp_path):
    job = job_dict(tmp_path)
    job["train"]["augment"] = [{"name": "HorizontalFlip", "q": 7}]
    refused(
        "validate", write_job(tmp_path, job), says=("train.augment", "unknown argument(s) ['q']")
    )


# --- 6: logs and export targets ---------------------------------------------------------------


@pytest.mark.parametrize("address", ["http://127.0.0.1:9", "not an address"])
def test_logs_and_stop_with_an_unreachable_address(address):
    for command in ("logs", "stop"):
        errors = refused(command, "raysubmit_x", "--address", address,
                         says=("Ray Jobs API", "--address"))  # fmt: skip
        assert len(errors.splitlines()) == 1, errors  # not also 'raysubmit_x at ...: 2'


def test_export_into_a_file_or_the_experiments_own_results(tmp_path):
    root = experiment(tmp_path)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    refused("export", root, "--out", a_file, says=("is a file, not a folder",))
    assert a_file.read_text() == "mine"
    refused("export", root, "--out", root / "results", says=("own results folder",))
    assert not (root / "results" / "teachers.md").exists()
    refused("export", root, "--out", root / "runs", says=("own runs/ folder, which kdray",))
    assert not (root / "runs" / "teachers.md").exists()
    line = refused("export", root, "--out", root / "data" / "x", says=("own data/ folder",))
    assert "\n" not in line
    before = set(Path.cwd().iterdir())
    refused("export", root, "--out", "", says=("--out: empty",))
    assert set(Path.cwd().iterdir()) == before  # nothing written into the working directory
    refused("export", root, "--out", "/proc/kdray-out", says=("--out /proc/kdray-out: cannot",))


# --- 7: validate checks the pixels ------------------------------------------------------------


def test_validate_reports_a_truncated_image_and_says_what_it_checked(tmp_path):
    job = write_job(tmp_path)
    ok = cli("validate", job)
    assert ok.exit_code == 0 and "decoded every image" in ok.output, ok.output
    victim = truncate_an_image(tmp_path)
    refused("validate", job, says=(str(victim), "on_bad_image: skip"))
    quick = cli("validate", job, "--quick")
    assert quick.exit_code == 0 and "not the pixels (--quick)" in quick.output


# --- 8: smaller -------------------------------------------------------------------------------


def test_the_ok_line_is_one_line_at_80_columns(tmp_path):
    result = cli("validate", write_job(tmp_path), "--quick", env={"COLUMNS": "80"})
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("ok ")]
    assert line.endswith("student runs")


def test_validate_s_lines_fit_80_columns_and_count_in_words(tmp_path):
    result = cli("validate", write_job(tmp_path), "--quick", env={"COLUMNS": "80"})
    lines = result.output.splitlines()
    assert result.exit_code == 0 and len(lines) > 4
    # the ok line stays one line whatever the job file's path (a test above)
    assert [ln for ln in lines if len(ln) > 80 and not ln.startswith("ok ")] == []
    assert any(" KD run = " in ln or " KD runs = " in ln for ln in lines)
    assert not [ln for ln in lines if "(s)" in ln or " 1 seeds" in ln or " 1 studies" in ln]


def test_a_failed_stage_does_not_read_as_done(tmp_path):
    import io

    from rich.console import Console
    from rich.progress import TextColumn

    from kdray.grid.progress import GridProgress
    from kdray.store.experiment import Experiment

    root = experiment(tmp_path)
    for run in json.loads((root / "plan.json").read_text())["runs"]:
        (root / "runs" / run["run_id"]).mkdir(parents=True)
        (root / "runs" / run["run_id"] / "failure.json").write_text('{"error": "broke"}')
    progress = GridProgress(Console(file=io.StringIO(), width=120))
    progress.refresh(Experiment.open(root))
    teacher = progress.progress.tasks[0]
    columns = [c for c in progress.progress.columns if isinstance(c, TextColumn)]
    text = " ".join(str(c.render(teacher)) for c in columns)
    assert "0/1 finished" in text and "1 failed" in text and "done" not in text


def test_a_file_that_is_not_dicom_is_named_without_pydicom_advice(tmp_path):
    job = job_dict(tmp_path)
    (tmp_path / "images" / "right" / "scan.dcm").write_bytes(b"not a dicom file" * 10)
    errors = refused("validate", write_job(tmp_path, job), says=("scan.dcm", "not a DICOM file"))
    assert "force=True" not in errors and "on_bad_image: skip" in errors


# --- the sweep: more of what a hostile but honest user tries -----------------------------------


def _set(path: str, value):
    """A job change: set a dotted field (a value of ... deletes it)."""

    def change(job: dict, tmp_path: Path) -> None:
        *parents, last = path.split(".")
        node = job
        for key in parents:
            node = node.setdefault(key, {})
        if value is ...:
            node.pop(last, None)
        else:
            node[last] = _resolve(value, tmp_path)

    return change


def _resolve(value, tmp_path: Path):
    """A value whose callables (files made on demand) are called with tmp_path."""
    if callable(value):
        return value(tmp_path)
    if isinstance(value, dict):
        return {k: _resolve(v, tmp_path) for k, v in value.items()}
    return value


def _file(name: str, content: bytes | str):
    def make(tmp_path: Path) -> str:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return str(path)

    return make


def _csv(text: str | bytes):
    def make(tmp_path: Path) -> str:
        make_images(tmp_path / "images")
        path = tmp_path / "images" / "list.csv"
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return str(path)

    return make


def _image(relative: str, content: bytes):
    def change(job: dict, tmp_path: Path) -> None:
        (tmp_path / "images" / relative).write_bytes(content)

    return change


JOB_SWEEP = [  # (id, change to the job, a text the error must contain)
    ("epochs-word", _set("train.epochs", "ten"), "train.epochs"),
    ("epochs-zero", _set("train.epochs", 0), "train.epochs"),
    ("batch-negative", _set("train.batch_size", -1), "train.batch_size"),
    ("lr-word", _set("train.lr", "fast"), "train.lr"),
    ("optimizer", _set("train.optimizer", "rmsprop"), "train.optimizer"),
    ("seeds-string", _set("seeds", "0"), "seeds"),
    ("seeds-empty", _set("seeds", []), "seeds"),
    ("seeds-float", _set("seeds", [0.5]), "seeds"),
    ("seeds-twice", _set("seeds", [1, 1]), "seeds must be distinct"),
    ("seeds-huge", _set("seeds", [10**23]), "seeds are integers from 0"),
    ("seeds-negative", _set("seeds", [-1]), "seeds are integers from 0"),
    ("studies-list", _set("studies", [1]), "studies"),
    ("data-null", _set("data", None), "data"),
    ("studies-empty", _set("studies", {}), "studies"),
    ("studies-missing", _set("studies", ...), "studies"),
    ("labelled-empty", _set("labelled", {}), "labelled: give fraction: [...] or per_class"),
    (
        "method-a-word",
        _set("studies.normal.method", "kd"),
        "studies.normal.method: write the method as a mapping, {name: kd}",
    ),
    ("name-missing", _set("name", ...), "name"),
    ("name-space", _set("name", "my job"), "name"),
    ("name-escape", _set("name", "../x"), "name"),
    ("name-number", _set("name", 123), "name"),
    ("name-long", _set("name", "n" * 81), "name"),
    ("kind", _set("data.kind", "imagenet"), "data"),
    ("image-size", _set("data.image_size", 4), "data.image_size"),
    ("image-size-huge", _set("data.image_size", 5000), "data.image_size"),
    ("channels", _set("data.channels", 2), "data.channels"),
    ("on-bad-image", _set("data.on_bad_image", "ignore"), "data.on_bad_image"),
    ("root-missing", _set("data.root", lambda t: str(t / "nowhere")), "nowhere"),
    ("root-a-file", _set("data.root", _file("plain.txt", "x")), "plain.txt"),
    ("root-empty", _set("data.root", lambda t: str((t / "e").mkdir() or t / "e")), "/e"),
    ("root-and-csv", _set("data.csv", _csv("path,label\n")), "exactly one"),
    ("split-fractions", _set("data.split_by", {"valid": 0.6, "test": 0.6}), "below 1"),
    ("classes-unknown", _set("data.classes", ["up", "down"]), "up"),
    ("classes-extra", _set("data.classes", ["left", "right", "middle"]), "'middle'"),
    ("students-empty", _set("studies.normal.students", []), "students"),
    ("students-string", _set("studies.normal.students", "resnet10t"), "students"),
    ("student-unknown", _set("studies.normal.students", ["resnet9000"]), "resnet9000"),
    ("study-not-mapping", _set("studies.normal", "x"), "studies.normal"),
    ("study-reserved", _set("studies.summary", {"students": ["test_resnet"]}), "summary"),
    ("ensemble-twice", _set("studies.normal.teachers", [["resnet10t", "resnet10t"]]), "distinct"),
    ("method-unknown", _set("studies.normal.method", {"name": "magic"}), "method"),
    ("method-param", _set("studies.normal.method", {"name": "kd", "temperature": -1}), "temper"),
    ("sweep-twice", _set("studies.normal.method", {"name": "kd", "alpha": [0.5, 0.5]}), "alpha"),
    ("band-reversed", _set("studies.normal.teacher_val_band", [0.9, 0.1]), "low < high"),
    ("alpha", _set("distill.alpha", 2), "distill.alpha"),
    ("baseline-word", _set("baseline", "maybe"), "baseline"),
    ("storage-number", _set("storage", 5), "storage"),
    ("pretrained-stranger", _set("pretrained", {"resnet18": _file("w.pth", "x")}), "resnet18"),
    ("pretrained-missing", _set("pretrained", {"resnet10t": "/nowhere.pth"}), "does not exist"),
    ("pretrained-folder", _set("pretrained", {"resnet10t": lambda t: str(t)}), "does not exist"),
    ("pretrained-empty", _set("pretrained", {"resnet10t": _file("e.pth", b"")}), "checkpoint"),
    ("device-cuda", _set("resources.device", "cuda"), "gpus_per_worker"),
    ("cpus-zero", _set("resources.cpus_per_worker", 0), "cpus_per_worker"),
    ("retries", _set("faults.trial_retries", -1), "faults.trial_retries"),
    ("eval-every", _set("studies.normal.eval_every_steps", 0), "eval_every_steps"),
    ("unknown-top", _set("epochs", 3), "epochs: unknown field"),
    ("unknown-nested", _set("train.epoch", 3), "train.epoch: unknown field"),
    ("augment-word", _set("train.augment", "yes please"), "train.augment"),
    ("augment-unknown", _set("train.augment", [{"name": "Flop"}]), "Flop"),
    ("augment-p", _set("train.augment", [{"name": "HorizontalFlip", "p": 3}]), "p"),
    ("augment-nameless", _set("train.augment", [{"p": 1}]), "step 0: has no name"),
    ("augment-not-dicts", _set("train.augment", [1, 2]), "train.augment"),
    ("wandb-mode", _set("tracking.wandb", {"mode": "loud"}), "tracking.wandb.mode"),
    ("csv-missing", _set("data", {"kind": "folder", "csv": "/no/list.csv"}), "list.csv"),
    ("csv-header", _set("data", {"kind": "folder", "csv": _csv("file,class\n")}), "list.csv"),
    ("csv-empty", _set("data", {"kind": "folder", "csv": _csv("")}), "list.csv"),
    (
        "csv-bad-bytes",
        _set("data", {"kind": "folder", "csv": _csv(b"path,label\n\xff\xfe,a\n")}),
        "csv",
    ),
    (
        "csv-missing-image",
        _set("data", {"kind": "folder", "csv": _csv("path,label\nx.png,a\n")}),
        "x.png",
    ),
    ("mura-root", _set("data", {"kind": "mura", "root": "/no/mura"}), "/no/mura"),
    ("mura-task", _set("data", {"kind": "mura", "root": "/tmp", "task": "fracture"}), "task"),
    # round 3 (issue 24): numbers that are not finite, or far beyond any sense
    ("lr-inf", _set("train.lr", float("inf")), "train.lr: Input should be a finite number"),
    ("lr-minus-inf", _set("train.lr", float("-inf")), "train.lr"),
    ("lr-huge", _set("train.lr", 1e30), "train.lr: Input should be less than or equal to 10"),
    ("decay-inf", _set("train.weight_decay", float("inf")), "train.weight_decay"),
    ("temperature-inf", _set("distill.temperature", float("inf")), "distill.temperature"),
    ("temperature-huge", _set("distill.temperature", 1e20), "distill.temperature"),
    (
        "method-temperature-inf",
        _set("studies.normal.method", {"name": "kd", "temperature": float("inf")}),
        "temperature",
    ),
    ("cpus-inf", _set("resources.cpus_per_worker", float("inf")), "resources.cpus_per_worker"),
    ("wait-inf", _set("faults.resource_wait_s", float("inf")), "faults.resource_wait_s"),
    ("wait-zero", _set("faults.resource_wait_s", 0), "faults.resource_wait_s"),
    ("band-nan", _set("studies.normal.teacher_val_band", [float("nan"), 0.5]), "teacher_val_band"),
    # the training split has 8 images (2 classes x 8, a quarter each to valid and test)
    ("batch-over-split", _set("train.batch_size", 64), "larger than the training split (8"),
    (
        "batch-over-budget",
        lambda job, t: job.update(labelled={"fraction": [0.25, 1.0]}),
        "larger than the 2 labelled training images of the label budget 25%",
    ),
]

JOB_SWEEP += [  # MLflow stores MLflow 3 refuses: named before anything trains
    (f"mlflow-{name}", _set("tracking", {"mlflow": {"tracking_uri": uri}}), says)
    for name, uri, says in [
        ("empty", "", "tracking.mlflow.tracking_uri: is empty"),
        ("file", "file:/tmp/mlruns", "a file store, which MLflow 3 no longer opens"),
        ("path", "/tmp/mlruns", "a file store, which MLflow 3 no longer opens"),
        ("scheme", "nonsense://foo", "MLflow has no nonsense:// store"),
    ]
]

PIXEL_SWEEP = [  # bad images: found by `validate` (which decodes), each file named
    ("zero-byte-png", _image("left/0.png", b""), "0.png"),
    ("text-as-png", _image("left/1.png", b"hello, I am text"), "1.png"),
    ("jpeg-as-png", _image("right/2.png", b"\xff\xd8\xff\xe0" + b"\x00" * 30), "2.png"),
    ("dcm-garbage", _image("right/x.dcm", b"DICM" * 40), "x.dcm"),
]


@pytest.mark.parametrize(
    ("change", "says"), [c[1:] for c in JOB_SWEEP], ids=[c[0] for c in JOB_SWEEP]
)
def test_sweep_bad_job_fields(tmp_path, change, says):
    job = job_dict(tmp_path)
    change(job, tmp_path)
    refused("validate", write_job(tmp_path, job), "--quick", says=(says,))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("change", "says"), [c[1:] for c in PIXEL_SWEEP], ids=[c[0] for c in PIXEL_SWEEP]
)
def test_sweep_bad_images(tmp_path, change, says):
    job = write_job(tmp_path)
    change(None, tmp_path)
    refused("validate", job, says=(says, "on_bad_image: skip"))
    assert not (tmp_path / "runs").exists()


def _job_text(text: str | bytes):
    def make(tmp_path: Path) -> list:
        path = tmp_path / "job.yaml"
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return ["validate", path]

    return make


def _with_job(*args):
    def make(tmp_path: Path) -> list:
        return [a if a != "JOB" else write_job(tmp_path) for a in args]

    return make


def _on_experiment(*args, damage: tuple[str, str] | None = None):
    """A command on an experiment with fake finished runs; `damage`: (file glob, content)."""

    def make(tmp_path: Path) -> list:
        root = experiment(tmp_path)
        fake_finished_runs(root)
        if damage is not None:
            for path in root.glob(damage[0]) if "*" in damage[0] else [root / damage[0]]:
                path.write_text(damage[1])
        fill = {"EXP": root, "OUT": tmp_path / "out"}
        return [fill.get(a, a) if isinstance(a, str) else a for a in (*args, "EXP")]

    return make


ARGS_SWEEP = [  # (id, the command line, a text the error must contain)
    ("job-missing", lambda t: ["validate", t / "nope.yaml"], "no such job file"),
    ("job-folder", lambda t: ["validate", t], "is a folder"),
    ("job-list", _job_text("- name: x\n"), "YAML mapping"),
    ("job-empty", _job_text(""), "YAML mapping"),
    ("job-tabs", _job_text("name: x\nstudies:\n\tnormal: {}\n"), "not valid YAML"),
    ("job-unclosed", _job_text("name: [x\n"), "not valid YAML"),
    ("job-binary", _job_text(os.urandom(64) + b"\xff"), "job.yaml"),
    ("set-no-equals", _with_job("validate", "JOB", "--set", "train.epochs"), "--set"),
    ("set-empty-path", _with_job("validate", "JOB", "--set", "=3"), "--set"),
    ("set-into-scalar", _with_job("validate", "JOB", "--set", "train.epochs.x=1"), "section"),
    ("set-bad-yaml", _with_job("validate", "JOB", "--set", "seeds=[1"), "--set"),
    ("set-unknown", _with_job("validate", "JOB", "--set", "train.speed=9"), "train.speed"),
    ("set-duplicate", _with_job("validate", "JOB", "--set", "seeds={a: 1, a: 2}"), "duplicate"),
    ("set-new-section", _with_job("validate", "JOB", "--set", "a.b.c=1"), "a: unknown field"),
    ("set-name-empty", _with_job("validate", "JOB", "--set", "name="), "name"),
    ("status-missing", lambda t: ["status", t / "nowhere"], "does not exist"),
    ("status-file", lambda t: ["status", _file("f.txt", "x")(t)], "not a kdray experiment"),
    ("status-not-exp", lambda t: ["status", t], "not a kdray experiment"),
    ("resume-missing", lambda t: ["resume", t / "nowhere"], "does not exist"),
    ("resume-job-file", lambda t: ["resume", write_job(t)], "not a kdray experiment"),
    ("pareto-never-run", _on_experiment("export", "--out", "OUT", "--onnx-pareto"), "macs"),
    ("job-json-empty", _on_experiment("export", damage=("job.json", "{}")), "job.json"),
    ("export-missing", lambda t: ["export", t / "nowhere"], "does not exist"),
    ("export-out-under-file", _on_experiment("export", "--out", "/etc/hostname/x"), "is a file"),
    ("onnx-unknown-run", _on_experiment("export", "--out", "OUT", "--onnx", "x"), "--onnx x"),
    ("summary-a-list", _on_experiment("export", damage=("runs/*/summary.json", "[]")), "summary"),
    ("attempts", _on_experiment("export", damage=("runs/*/attempts.json", "{")), "attempts"),
    ("failure", _on_experiment("export", damage=("runs/*/summary.json", "")), "summary.json"),
    ("driver-keys", _on_experiment("status", damage=("driver.json", "{}")), "driver.json"),
    ("job-future", _on_experiment("resume", damage=("job.json", '{"name": "x", "z": 1}')), "job"),
    (
        "submit-outside",
        lambda t: ["submit", write_job(t), "--address", "http://127.0.0.1:9"],
        "project",
    ),
]


@pytest.mark.parametrize("make_args", [c[1] for c in ARGS_SWEEP], ids=[c[0] for c in ARGS_SWEEP])
def test_sweep_bad_command_lines(tmp_path, make_args, monkeypatch):
    case = next(c for c in ARGS_SWEEP if c[1] is make_args)
    (tmp_path / "project").mkdir()  # submit: the job file lies outside the project folder
    monkeypatch.chdir(tmp_path / "project" if case[0] == "submit-outside" else tmp_path)
    refused(*make_args(tmp_path), says=(case[2],))
    assert not (tmp_path / "out").exists()  # export: nothing written when refused


@pytest.mark.parametrize(
    ("text", "value", "says"),
    [
        ("name: [x\n", None, "not valid YAML: expected ',' or ']', but got '<stream end>'"),
        ("name: x\nstudies:\n\tnormal: {}\n", None, "'\\t' that cannot start any token"),
        (None, "train.epochs=[1", "--set train.epochs=[1: value is not valid YAML (expected"),
        (None, "train.epochs={a: ", "(expected the node content, but found '<stream end>'"),
    ],
)
def test_yaml_that_does_not_parse_is_one_line_naming_the_file_once(tmp_path, text, value, says):
    job = write_job(tmp_path)
    if text is not None:
        job.write_text(text)
    result = cli("validate", job, *(["--set", value] if value else []))
    assert result.exit_code == 2 and says in result.output, result.output
    (line,) = result.output.splitlines()
    assert line.count(str(job)) == 1 and "^" not in line


@pytest.mark.parametrize(
    "args", [["run", "--epochs", "3"], ["validate"], ["frobnicate"], ["status", "a", "b"]]
)
def test_sweep_usage_errors_exit_2_with_usage(args):
    result = cli(*args)
    assert result.exit_code == 2 and "Usage" in result.output


def test_onnx_of_a_sample_its_search_stopped_says_so(tmp_path):
    root = experiment(tmp_path)
    run_id = fake_finished_runs(root)[0]
    (root / "runs" / run_id / "summary.json").write_text('{"status": "stopped", "epochs": 1}')
    refused(
        "export",
        root,
        "--out",
        tmp_path / "out",
        "--onnx",
        run_id,
        says=(f"--onnx {run_id}: a sample its search stopped early, which keeps no model",),
    )


def test_onnx_of_a_run_whose_model_file_is_damaged(tmp_path):
    root = experiment(tmp_path)
    run_id = fake_finished_runs(root)[0]
    (root / "runs" / run_id / "model.pt").write_bytes(b"\x80garbage")
    refused(
        "export", root, "--out", tmp_path / "out", "--onnx", run_id,
        says=("model.pt", "unreadable or corrupt", "kdray resume"),
    )  # fmt: skip


# --- round 3 (issue 24): what the data holds, once read ----------------------------------------


def test_a_batch_larger_than_the_split_is_refused_by_run_before_ray(tmp_path):
    job = job_dict(tmp_path)
    job["train"]["batch_size"] = 64
    refused("run", write_job(tmp_path, job), says=("train.batch_size: 64", "at most 8"))
    assert not (tmp_path / "runs" / "bad").exists()  # refused before any run: nothing left


def write_npz(path: Path, train_labels: list[int], size: int = 20) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, labels in (("train", train_labels), ("val", [0, 1] * 3), ("test", [0, 1] * 3)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (len(labels), size, size), np.uint8)
        arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.uint8).reshape(-1, 1)
    np.savez(path, **arrays)
    return path


def npz_job(tmp_path: Path, npz: Path, **data) -> dict:
    return job_dict(tmp_path, data={"kind": "medmnist", "path": str(npz), **data})


def test_an_npz_label_out_of_line_is_named_with_where_it_is(tmp_path):
    npz = write_npz(tmp_path / "stray.npz", [0, 1] * 5 + [7])
    errors = refused("validate", write_job(tmp_path, npz_job(tmp_path, npz)), "--quick")
    assert "label 7 (train_labels[10])" in errors and "never occur (2-6)" in errors, errors
    assert "has no images" not in errors and len(errors.splitlines()) == 1


def test_an_npz_given_by_path_trains_at_its_own_size_unless_image_size_is_set(tmp_path):
    from kdray.data import prepare_data
    from kdray.spec.load import parse_job

    npz = write_npz(tmp_path / "own.npz", [0, 1] * 5)
    native = parse_job(npz_job(tmp_path, npz))
    assert prepare_data(native.data, tmp_path / "cache").image_size == 20  # not 32
    resized = parse_job(npz_job(tmp_path, npz, image_size=16))
    assert prepare_data(resized.data, tmp_path / "cache").image_size == 16
    # a job that sets image_size dumps (and so names its runs) as before
    assert resized.data.model_dump(mode="json")["image_size"] == 16
    result = cli("validate", write_job(tmp_path, npz_job(tmp_path, npz)))
    assert result.exit_code == 0, result.output


@pytest.mark.timeout(60)  # a read of /dev/zero would never end
def test_symlink_loops_and_devices_in_a_class_folder_are_named_never_read(tmp_path):
    job = job_dict(tmp_path)
    left = tmp_path / "images" / "left"
    (left / "loop.png").symlink_to(left / "loop.png")
    (left / "zero.png").symlink_to("/dev/zero")
    (left / "up").symlink_to(tmp_path / "images")  # a folder loop
    errors = refused("validate", write_job(tmp_path, job))
    for text in ("loop.png: a symlink loop", "zero.png: a symlink to /dev/zero, a character "
                 "device", "up: a symlink to the folder", "on_bad_image: skip"):  # fmt: skip
        assert text in errors, errors
    assert not (tmp_path / "runs").exists()
    job["data"]["on_bad_image"] = "skip"
    result = cli("validate", write_job(tmp_path, job))
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # the checked line, unwrapped
    assert "3 left out (on_bad_image: skip)" in said and "zero.png" in said, said


def test_16_bit_radiographs_use_their_full_range_not_clipped_at_255(tmp_path):
    import cv2

    from kdray.data import load_split, prepare_data
    from kdray.spec.load import parse_job
    from tests.test_data_folder import write_dicom

    ramp = np.linspace(0, 1, 32 * 32).reshape(32, 32)
    ranges = [(0, 65535), (0, 4095), (30000, 65535), (1000, 60000)]  # all of them above 255
    for label in ("left", "right"):
        for i, (low, high) in enumerate(ranges):
            values = (low + ramp * (high - low)).astype(np.uint16)
            folder = tmp_path / "images16" / label
            folder.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(folder / f"{i}.png"), values)  # a real 16-bit PNG
            write_dicom(folder / f"{i}.dcm", values, bits=16)
    job = job_dict(tmp_path)
    job["data"] = {"kind": "folder", "root": str(tmp_path / "images16"), "image_size": 32}
    job["data"]["split_by"] = {"valid": 0.25, "test": 0.25}
    result = cli("validate", write_job(tmp_path, job))
    assert result.exit_code == 0, result.output
    info = prepare_data(parse_job(job).data, tmp_path / "cache")
    for split in ("train", "valid", "test"):
        images, _ = load_split(info.path, split)
        for image in images:  # what the model is fed (before its mean/std normalisation)
            assert image.min() == 0 and image.max() == 255
            assert len(np.unique(image)) > 200  # the ramp's levels, not a wall of 255


# --- round 4 (issue 33): the new tasks' inputs --------------------------------------------------


def masks_job(tmp_path: Path, **data) -> dict:
    """A segmentation job on an images/ + masks/ tree made in the test."""
    from tests.test_segmentation_data import pairs_tree

    root = tmp_path / "pairs"
    if not root.exists():
        pairs_tree(root, count=12)
    section = {"kind": "masks", "root": str(root), "image_size": 32, **data}
    seg = {"teachers": ["unet-resnet10t"], "students": ["unet-test_resnet"]}
    studies = {"seg": {**seg, "method": {"name": "pixel_kd"}}}
    return job_dict(tmp_path, data=section, studies=studies)


def object_array_npz(path: Path, labels_key: str) -> Path:
    """An archive whose train images are a pickled object array (np.load refuses it)."""
    images = np.empty(4, dtype=object)
    images[:] = [np.zeros((8, 8), np.uint8)] * 4
    arrays = {"train_images": images}
    for key in ("train", "val", "test"):
        arrays.setdefault(f"{key}_images", np.zeros((4, 8, 8), np.uint8))
        arrays[f"{key}_{labels_key}"] = (
            np.zeros((4, 8, 8), np.uint8) if labels_key == "label" else np.array([0, 1, 0, 1])
        )
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("kind", ["masks", "medmnist"])
def test_an_npz_of_object_arrays_is_named_in_one_line_by_validate_and_run(tmp_path, kind):
    npz = object_array_npz(tmp_path / "objects.npz", "label" if kind == "masks" else "labels")
    job = job_dict(tmp_path, data={"kind": kind, "path": str(npz), "image_size": 32})
    if kind == "masks":
        job["studies"] = masks_job(tmp_path)["studies"]
    for command in ("validate", "run"):
        errors = refused(command, write_job(tmp_path, job), says=(str(npz), "train_images"))
        assert "Python objects" in errors and len(errors.splitlines()) == 1, errors
    assert not (tmp_path / "runs" / "bad").exists()  # no job.json, plan.json or lock left


def test_a_task_type_the_read_data_cannot_be_is_one_line_in_validate_and_run(tmp_path):
    job = job_dict(tmp_path, data={**job_dict(tmp_path)["data"], "task_type": "multi_label"})
    for command in ("validate", "run"):
        errors = refused(command, write_job(tmp_path, job), says=("data.task_type: multi_label",))
        assert "one class per image (single_label)" in errors and len(errors.splitlines()) == 1
        assert "data: data." not in errors
    assert not (tmp_path / "runs" / "bad").exists()


@pytest.mark.parametrize(
    ("make_job", "not_said"),
    [  # masks read as labels: unet names would be blamed as timm models
        (lambda t: masks_job(t, task_type="single_label"), "is not a timm model"),
        # labels read as masks: the KD method would be blamed
        (
            lambda t: job_dict(t, data={**job_dict(t)["data"], "task_type": "segmentation"}),
            "is defined for",
        ),
    ],
    ids=["masks-as-labels", "labels-as-masks"],
)
def test_a_task_type_that_does_not_fit_the_data_kind_is_named_first(tmp_path, make_job, not_said):
    errors = refused("validate", write_job(tmp_path, make_job(tmp_path)), "--quick")
    first = errors.splitlines()[0]
    assert "data.task_type:" in first and "does not fit" in first, errors
    assert not_said not in errors


def warned(*args, says: tuple[str, ...]) -> str:
    """Run kdray expecting exit 0 with warning lines that contain each of `says`."""
    result = cli(*args)
    assert result.exit_code == 0, result.output
    warnings = "\n".join(ln for ln in result.output.splitlines() if ln.startswith("warning"))
    for text in says:
        assert text in warnings, f"{text!r} not in:\n{result.output}"
    return warnings


def test_validate_warns_of_what_run_warns_a_method_and_a_band(tmp_path):
    studies = {
        "decoupled": {"teachers": ["resnet10t"], "students": ["test_resnet"],
                      "method": {"name": "dkd"}},
        "defective": {"teachers": ["resnet10t"], "students": ["test_resnet"],
                      "teacher_val_band": [0.3, 0.45]},
    }  # fmt: skip
    warned("validate", write_job(tmp_path, job_dict(tmp_path, studies=studies)),
           says=("studies.decoupled.method: DKD with 2 classes",
                 "studies.defective.teacher_val_band [0.3, 0.45] starts at or below"))  # fmt: skip


def test_a_named_category_without_images_is_refused(tmp_path):
    from tests.test_segmentation_data import busi_tree

    root = busi_tree(tmp_path / "busi")
    for file in (root / "normal").iterdir():
        if "_mask" not in file.name:
            file.unlink()  # its masks stay: the folder holds no image
    data = {"kind": "masks", "root": str(root), "layout": "busi", "image_size": 32}
    job = {**masks_job(tmp_path), "data": {**data, "categories": ["benign", "normal"]}}
    errors = refused("validate", write_job(tmp_path, job), "--quick")
    assert f"{root / 'normal'}: no images" in errors and "data.categories" in errors, errors


@pytest.mark.parametrize("layout", ["busi", "pairs"])
def test_a_mask_without_its_image_is_named_in_a_warning(tmp_path, layout):
    from tests.test_segmentation_data import busi_tree, lesion, pairs_tree

    if layout == "busi":
        root = busi_tree(tmp_path / "busi")
        lone = root / "benign" / "benign (9)_mask.png"
    else:
        root = pairs_tree(tmp_path / "pairs", count=12)
        lone = root / "masks" / "ISIC_0000099.png"
    Image.fromarray(lesion()).save(lone)
    job = {**masks_job(tmp_path), "data": {"kind": "masks", "root": str(root), "layout": layout}}
    job["data"]["image_size"] = 32
    warned("validate", write_job(tmp_path, job), "--quick", says=("1 mask file(s) without their "
           f"image, left out: {lone}",))  # fmt: skip


def csv_job(tmp_path: Path, rows: list[str], header: str = "path,label") -> dict:
    make_images(tmp_path / "images")
    (tmp_path / "images" / "list.csv").write_text("\n".join([header, *rows]) + "\n")
    data = {"kind": "folder", "csv": str(tmp_path / "images" / "list.csv"), "image_size": 16}
    return job_dict(tmp_path, data={**data, "split_by": {"valid": 0.25, "test": 0.25}})


def every_row(group: bool = False) -> list[str]:
    return [
        f"{side}/{i}.png,{side}" + (f",p{i}" if group else "")
        for side in ("left", "right")
        for i in range(8)
    ]


def test_an_image_listed_twice_with_other_labels_is_refused(tmp_path):
    job = csv_job(tmp_path, [*every_row(), "left/3.png,right"])
    errors = refused("validate", write_job(tmp_path, job), "--quick")
    assert "line 18: " in errors and "left/3.png is listed again, with label 'right'" in errors
    assert "line 5: 'left'" in errors and "one row" in errors, errors


def test_an_image_listed_twice_alike_is_used_once_and_said(tmp_path):
    from kdray.data import open_sources
    from kdray.spec.load import parse_job

    job = csv_job(tmp_path, [*every_row(), "left/3.png,left", "right/0.png,right"])
    warned("validate", write_job(tmp_path, job), "--quick",
           says=("2 row(s) list an image again with the same labels (line 18 repeats line 5; "
                 "line 19 repeats line 10); each image is used once",))  # fmt: skip
    _, sources = open_sources(parse_job(job).data)
    files = [str(p) for source in sources.values() for p in source.paths]
    assert len(files) == len(set(files)) == 16  # never in two splits, nor twice in one


def test_blank_group_cells_are_counted_in_a_warning(tmp_path):
    rows = every_row(group=True)
    rows[:3] = [row.rsplit(",", 1)[0] + "," for row in rows[:3]]
    job = csv_job(tmp_path, rows, header="path,label,group")
    warned("validate", write_job(tmp_path, job), "--quick",
           says=("3 of 16 rows have a blank group cell", "fill in the group column"))  # fmt: skip


def test_a_label_with_no_positive_in_train_is_warned_of(tmp_path):
    rows = [f"{s}/{i}.png,{i % 2},0,{'train' if i < 4 else 'valid' if i < 6 else 'test'}"
            for s in ("left", "right") for i in range(8)]  # fmt: skip
    rows[-1] = rows[-1].replace(",0,test", ",1,test")  # Edema: positive in test alone
    job = csv_job(tmp_path, rows, header="path,Atelectasis,Edema,split")
    job["data"]["label_columns"] = ["Atelectasis", "Edema"]
    job["data"].pop("split_by")
    warned("validate", write_job(tmp_path, job), "--quick",
           says=("label(s) ['Edema'] have no positive image in the train split",))  # fmt: skip


def test_export_of_a_running_grid_says_how_many_runs_its_tables_hold(tmp_path):
    from kdray.store.lock import hold_driver

    root = experiment(tmp_path)
    first, *others = fake_finished_runs(root)
    for run_id in others:  # still training: no summary yet
        (root / "runs" / run_id / "summary.json").unlink()
    total = 1 + len(others)
    with hold_driver(root):  # a live driver, as `kdray run` holds it
        said = warned("export", root, "--out", tmp_path / "out",
                      says=(f"1 of {total} runs finished; the grid is still running",))  # fmt: skip
    assert str(root) in said
    assert first in (tmp_path / "out" / "trials.csv").read_text()  # what is finished, exported
    said = warned("export", root, "--out", tmp_path / "out2",
                  says=(f"1 of {total} runs finished", f"kdray resume {root}"))  # fmt: skip
    assert "still running" not in said
    for run_id in others:  # each ended failed in its summary: a resume would train none of them
        summary = {"run_id": run_id, "status": "failed", "error": "training diverged: ..."}
        (root / "runs" / run_id / "summary.json").write_text(json.dumps(summary))
    said = warned("export", root, "--out", tmp_path / "out3",
                  says=(f"1 of {total} runs finished, {total - 1} failed", "says why each failed",
                        "a resume would train none"))  # fmt: skip
    assert "kdray resume" not in said


@pytest.mark.parametrize("how", ["job", "env"])
def test_a_weights_cache_that_is_a_file_is_named(tmp_path, monkeypatch, how):
    a_file = tmp_path / "cache.txt"
    a_file.write_text("not a folder")
    job = job_dict(tmp_path, pretrained={"resnet10t": "imagenet"})
    if how == "job":
        job["weights_cache"] = str(a_file)
    else:
        monkeypatch.setenv("KDRAY_WEIGHTS_CACHE", str(a_file))
    named = "weights_cache" if how == "job" else "$KDRAY_WEIGHTS_CACHE"
    for command in ("validate", "run", "weights"):
        errors = refused(command, write_job(tmp_path, job), says=(f"{named}: {a_file} is a file",))
        assert len(errors.splitlines()) == 1, errors
    assert a_file.read_text() == "not a folder" and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("value", ["many", 2.5, True, 0])
def test_runs_per_trial_other_than_auto_or_a_count_is_one_line(tmp_path, value):
    job = job_dict(tmp_path)
    job["resources"]["runs_per_trial"] = value  # `true` was read as 1
    errors = refused("validate", write_job(tmp_path, job), "--quick",
                     says=("resources.runs_per_trial: runs_per_trial is auto or a whole number",
                           f"(got {value!r})"))  # fmt: skip
    assert len(errors.splitlines()) == 1, errors  # not one line per branch of `int | "auto"`


def test_a_16_bit_mask_of_class_indices_is_read_as_stored(tmp_path):
    import cv2

    from kdray.data import prepare_data
    from kdray.spec.load import parse_job

    job = masks_job(tmp_path, classes=["background", "benign", "malignant"])
    values = np.zeros((40, 48), np.uint16)
    values[5:15, 10:30], values[20:30, 10:30] = 1, 2  # class indices, saved in 16 bits
    masks = sorted((tmp_path / "pairs" / "masks").iterdir())
    for mask in masks:
        assert cv2.imwrite(str(mask), values)
    mask = masks[0]
    result = cli("validate", write_job(tmp_path, job))
    assert result.exit_code == 0, result.output
    info = prepare_data(parse_job(job).data, tmp_path / "cache")
    labels = np.concatenate([np.load(f"{info.path}/{s}_labels.npy") for s in info.counts])
    assert set(np.unique(labels)) == {0, 1, 2}
    values[0, 0] = 7  # a value no class has: named as stored, not as stretched (255)
    assert cv2.imwrite(str(mask), values)
    errors = refused("validate", write_job(tmp_path, job), says=(str(mask), "mask values [7]"))
    assert "255" not in errors, errors


def test_validate_counts_the_images_it_decoded_when_bad_ones_are_skipped(tmp_path):
    job = job_dict(tmp_path)
    job["data"]["on_bad_image"] = "skip"
    truncate_an_image(tmp_path)
    result = cli("validate", write_job(tmp_path, job), env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    counts = re.search(r"train (\d+), valid (\d+), test (\d+) images", said)
    assert counts and sum(map(int, counts.groups())) == 15, said  # 16 files, 1 unreadable
    assert "1 left out (on_bad_image: skip)" in said and "3.png" in said


@pytest.mark.parametrize("command", ["run", "resume"])
def test_joining_no_cluster_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch, command):
    import ray._private.services as services

    # no Ray started with `ray start` here, whatever else runs on this machine
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    no_gcs = lambda: frozenset()  # noqa: E731
    no_gcs.cache_clear = lambda: None
    monkeypatch.setattr(services, "find_gcs_addresses", no_gcs)
    monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir: None)
    if command == "run":
        target = write_job(tmp_path)
    else:
        target = experiment(tmp_path)
        before = sorted(p.name for p in target.rglob("*"))
    errors = refused(command, target, "--address", "auto",
                     says=("--address auto", "no running Ray cluster", "ray start"))  # fmt: skip
    assert len(errors.splitlines()) == 1
    if command == "run":
        assert not (tmp_path / "runs").exists()
    else:
        assert sorted(p.name for p in target.rglob("*")) == before


def test_a_closed_port_as_address_is_refused_at_once(tmp_path):
    import socket

    with socket.socket() as free:  # a port that nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    errors = refused("run", write_job(tmp_path), "--address", f"127.0.0.1:{port}",
                     says=("no Ray cluster answered", "ray start"))  # fmt: skip
    assert len(errors.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_a_model_of_a_fixed_input_size_is_built_for_the_images_or_refused(tmp_path):
    job = job_dict(tmp_path)
    job["studies"]["normal"]["students"] = ["vit_tiny_patch16_224"]  # built for 16 px
    assert cli("validate", write_job(tmp_path, job), "--quick").exit_code == 0
    job["studies"]["normal"]["students"] = ["crossvit_tiny_240"]  # its two patch sizes: no
    errors = refused("validate", write_job(tmp_path, job), "--quick",
                     says=("studies.normal.students", "crossvit_tiny_240", "16 px",
                           "data.image_size: 240"))  # fmt: skip
    assert len(errors.splitlines()) == 1


def test_a_batch_of_one_image_that_batchnorm_cannot_train_on_is_refused(tmp_path):
    job = job_dict(tmp_path, train={"epochs": 1, "batch_size": 1, "augment": False})
    errors = refused("validate", write_job(tmp_path, job), "--quick",
                     says=("train.batch_size: 1", "BatchNorm", "2 or more"))  # fmt: skip
    assert len(errors.splitlines()) == 1
    job["data"]["image_size"] = 64  # no 1x1 map: a batch of one trains
    assert cli("validate", write_job(tmp_path, job), "--quick").exit_code == 0


@pytest.mark.parametrize(
    ("step", "says"),
    [
        ({"name": "RandomCrop", "height": 64, "width": 64}, "fails on a 16x16 image"),
        ({"name": "ToTensorV2"}, "converts and normalises images itself"),
        ({"name": "Normalize"}, "converts and normalises images itself"),
        ({"name": "Resize", "height": 64, "width": 64}, "from 16x16 to 64x64"),
        ({"name": "CenterCrop", "height": 8, "width": 8}, "from 16x16 to 8x8"),
    ],
    ids=["crop-too-large", "to-tensor", "normalize", "resize", "center-crop"],
)
def test_an_augment_step_that_fails_or_changes_the_image_is_named(tmp_path, step, says):
    flip = {"name": "HorizontalFlip", "p": 0.5}
    job = job_dict(tmp_path, train={"epochs": 1, "batch_size": 8, "augment": [flip, step]})
    errors = refused("validate", write_job(tmp_path, job), "--quick",
                     says=(f"train.augment step 1 ({step['name']})", says))  # fmt: skip
    assert len(errors.splitlines()) == 1


def test_an_augment_pipeline_that_keeps_the_image_is_accepted(tmp_path):
    steps = [
        {"name": "HorizontalFlip", "p": 0.5},
        {"name": "Affine", "rotate": [-10, 10], "p": 0.5},
        {"name": "RandomResizedCrop", "size": [16, 16]},
        {"name": "RandomBrightnessContrast"},
    ]
    job = job_dict(tmp_path, train={"epochs": 1, "batch_size": 8, "augment": steps})
    assert cli("validate", write_job(tmp_path, job), "--quick").exit_code == 0


def test_loss_weights_all_0_and_a_warm_up_past_the_last_epoch_are_warned_of(tmp_path):
    studies = {
        "silent": {"teachers": ["resnet10t"], "students": ["test_resnet"],
                   "method": {"name": "fitnets", "hint_weight": 0, "ce_weight": 0}},
        "slow": {"teachers": ["resnet10t"], "students": ["test_resnet"],
                 "method": {"name": "dkd", "warmup_epochs": 1000}},
    }  # fmt: skip
    says = (
        "studies.silent.method: hint_weight, ce_weight: every weight of the loss is 0",
        "studies.slow.method: warmup_epochs: 1000 is longer than train.epochs (1)",
    )
    job = write_job(tmp_path, job_dict(tmp_path, studies=studies))
    warned("validate", job, "--quick", says=says)


@pytest.mark.parametrize("command", ["status", "export", "resume"])
def test_an_experiment_folder_that_does_not_exist_is_named_so(tmp_path, command):
    errors = refused(command, tmp_path / "nowhere", says=("nowhere does not exist",))
    assert len(errors.splitlines()) == 1 and "not a kdray experiment" not in errors


def test_an_address_answering_http_404_is_no_ray_dashboard():
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"http://127.0.0.1:{server.server_port}"
    try:
        for command in ("logs", "stop"):  # `submit` asks the same client, once its job is valid
            says = (f"no Ray dashboard answered at {address}", "HTTP 404")
            errors = refused(command, "raysubmit_x", "--address", address, says=says)
            assert len(errors.splitlines()) == 1 and "Ray 1.9" not in errors
    finally:
        server.shutdown()


def test_eval_every_steps_without_a_band_is_warned_of_not_refused(tmp_path):
    """It changes nothing; refusing it would stop an experiment made before the check."""
    job = job_dict(tmp_path)
    job["studies"]["normal"]["eval_every_steps"] = 5
    says = "studies.normal.eval_every_steps: used only to check a defective teacher"
    warned("validate", write_job(tmp_path, job), "--quick", says=(says,))
