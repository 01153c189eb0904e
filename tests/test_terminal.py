"""What `kdray run` prints when its grid ends, read at 80 columns (a narrow terminal, a log):
every number of every closing table in full (issue 24). No grid: a quickstart-shaped experiment
is written as finished, and the function `kdray run` calls prints its trials table."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from rich.console import Console

from kdray import cli
from kdray.export.markdown import tables
from kdray.results.tables import read_trials, write_results
from kdray.spec.load import parse_job
from kdray.store.experiment import Experiment
from tests.conftest import REPO

SHOWN = ("teachers", "summary", "improvement", "compression")


def finished_quickstart(tmp_path, seeds: list[int]):
    """jobs/quickstart.yaml's runs, each written as finished, with costs."""
    raw = yaml.safe_load((REPO / "jobs" / "quickstart.yaml").read_text())
    raw["storage"], raw["seeds"] = str(tmp_path / "runs"), seeds
    job = parse_job(raw)
    exp = Experiment.create(job)
    for i, run in enumerate(exp.plan().runs.values()):
        run_dir = exp.run_dir(run.run_id)
        run_dir.mkdir(parents=True)
        score = 0.5775 if run.band else 0.7123 + 0.0137 * i + 0.02 * run.seed
        summary = {"run_id": run.run_id, "status": "finished", "error": None, "epochs": 4}
        summary |= {"params": 1_234_567 + 1000 * i, "macs": 5.5e7 + 1e6 * i}
        summary |= {"latency_ms_p50": 3.21 + i, "wall_s": 61.2, "train_s": 40.1}
        summary |= {f"{split}_acc": score for split in ("train", "val", "test")}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        (run_dir / "attempts.json").write_text(json.dumps({"attempts": 1}))
    write_results(exp)
    return read_trials(exp).to_pandas(), list(job.studies)


@pytest.mark.parametrize("seeds", [[0], [0, 1, 2]], ids=["one-seed", "three-seeds"])
def test_at_80_columns_every_number_of_every_closing_table_is_whole(tmp_path, monkeypatch, seeds):
    monkeypatch.setenv("COLUMNS", "80")
    recorded = Console(record=True)  # as kdray's own console: its width from COLUMNS
    monkeypatch.setattr(cli, "console", recorded)
    trials, studies = finished_quickstart(tmp_path, seeds)
    cli.print_closing_tables(trials, studies)
    text = recorded.export_text()
    assert recorded.width == 80
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    made = tables(trials, studies)
    numbers = 0
    for name in (*SHOWN, *studies):
        title, table = made[name]
        assert title in text
        for value in table.astype(str).to_numpy().ravel():
            if re.search(r"\d", value):  # each number, and each name holding one, in full
                assert value in text, f"{name}: {value!r} not shown whole"
                numbers += 1
    assert numbers > 50
    teachers = text[text.index("Teachers") : text.index("student x teacher")]
    assert "4.000" not in teachers and re.search(r"\b4\b", teachers)  # epochs as counted


def test_the_data_lines_are_cut_at_their_commas_never_inside_a_name_and_its_number():
    from kdray.grid.progress import fitted_lines

    names = ["ELBOW", "FINGER", "FOREARM", "HAND", "HUMERUS", "SHOULDER", "WRIST"] * 3
    text = "train images per class: " + ", ".join(f"{n}_{i} {100 + i}" for i, n in enumerate(names))
    lines = fitted_lines(text, 80)
    assert len(lines) > 1 and all(len(line) <= 80 for line in lines)
    assert all(line.startswith("  ") for line in lines[1:])
    parts = [p.strip() for line in lines for p in line.split(",") if p.strip()]
    assert parts[0] == "train images per class: ELBOW_0 100"
    assert parts[1:] == [f"{n}_{i} {100 + i}" for i, n in enumerate(names)][1:]
    assert fitted_lines("data: synthetic, 32px x 1ch", 80) == ["data: synthetic, 32px x 1ch"]


def test_a_list_in_a_data_line_is_never_cut():
    from kdray.grid.progress import fitted_lines

    said = "a.png: mask values [0, 100, 255]: a binary mask holds 0 (background, one lesion)"
    lines = fitted_lines(f"checked: the job, the data, 1 left out: {said}, into /tmp/x", 60)
    assert len(lines) > 1 and any(said in line for line in lines), lines


def test_a_teacher_at_chance_is_said_under_the_teachers_and_the_kd_gain(tmp_path, monkeypatch):
    import numpy as np

    from kdray.data.cache import DataInfo
    from kdray.grid.teacher_checks import weak_teacher_lines

    cache = tmp_path / "cache"  # a validation split of 120 images, 60 % of one class
    cache.mkdir()
    np.save(cache / "valid_images.npy", np.zeros((120, 8, 8, 1), np.uint8))
    np.save(cache / "valid_labels.npy", np.array([0] * 72 + [1] * 48))
    data = DataInfo(str(cache), "x", ["HAND", "WRIST"], 1, 8, {"valid": 120}, [0.5], [0.2])
    trials, studies = finished_quickstart(tmp_path, [0])
    teachers = (trials.stage == "teacher") & trials.band_low.isna()
    assert sorted(trials[teachers].model) == ["resnet10t", "seresnet18"]
    seresnet = teachers & (trials.model == "seresnet18")
    trials.loc[trials.model == "seresnet18", "params"] = 11e6
    trials.loc[trials.model == "resnet10t", "params"] = 5e6
    resnet = (trials.model == "resnet10t") & trials.band_low.isna()
    trials.loc[resnet, "val_score"] = 0.740  # the student's baseline (and reverse's teacher)
    trials.loc[seresnet, "val_score"] = 0.9
    # reverse: resnet10t (0.740) teaches the larger seresnet18 (0.9), weaker by design
    assert not weak_teacher_lines(trials, data)  # both above 0.6 + noise (0.089)
    trials.loc[seresnet, "val_score"] = 0.65  # near chance
    (line,) = weak_teacher_lines(trials, data)
    assert line.startswith("teacher seresnet18: validation accuracy 0.650, within noise (0.089) "
                           "of 0.600, the score of always predicting HAND: it learned")  # fmt: skip
    trials.loc[seresnet, "val_score"] = 0.72  # above chance, below its student's own baseline
    (line,) = weak_teacher_lines(trials, data)
    assert "below its students' own no-KD baselines (0.740), though it is no smaller" in line
    assert line.startswith("teacher seresnet18: validation accuracy 0.720, below"), line
    monkeypatch.setenv("COLUMNS", "200")
    recorded = Console(record=True)
    monkeypatch.setattr(cli, "console", recorded)
    cli.print_closing_tables(trials, studies, [line])
    text = recorded.export_text()
    teachers_at, gain_at = text.index("Teachers"), text.index("KD gain over")
    said = [m.start() for m in re.finditer(re.escape(f"warning {line}"), text)]
    assert len(said) == 2 and teachers_at < said[0] < gain_at < said[1], text


def test_in_a_log_lines_are_200_columns_wide_unless_columns_says_otherwise(tmp_path):
    """Piped (a log, nohup, Ray Jobs), kdray prints 200 columns wide, not rich's 80, so a path
    or a study's line stays whole; COLUMNS, when set, still wins."""
    from typer.testing import CliRunner

    raw = yaml.safe_load((REPO / "jobs" / "quickstart.yaml").read_text())
    raw["storage"] = str(tmp_path / "a-storage-folder-whose-path-is-long" / "runs")
    job_file = tmp_path / "quickstart.yaml"
    job_file.write_text(yaml.safe_dump(raw))
    study = "study defective: method kd (teacher cached, defective band [0.4, 0.55]), 1 KD run"
    piped = CliRunner().invoke(cli.app, ["validate", str(job_file), "--quick"])
    assert piped.exit_code == 0, piped.output
    assert study in piped.output and len(study) > 80
    narrow = CliRunner().invoke(
        cli.app, ["validate", str(job_file), "--quick"], env={"COLUMNS": "80"}
    )
    assert narrow.exit_code == 0, narrow.output
    assert study not in narrow.output  # cut where a narrow terminal needs it
