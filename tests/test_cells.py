"""KD cells from a trials table: the setting chosen on validation, paired gains and verdicts."""

import json

import pandas as pd
import pytest

from kdray.export.markdown import CHOSEN_ROW, sensitivity_table, study_table, summary_table, tables
from kdray.results.cells import study_cells


def run(trial_id, model, seed, val, test, roles, teachers=(), setting=None, method="kd"):
    return {
        "trial_id": trial_id,
        "stage": "teacher" if not teachers and "baseline" not in roles else "student",
        "model": model,
        "seed": seed,
        "method": method if teachers else "none",
        "roles": list(roles),
        "teacher_trial_ids": list(teachers),
        "setting": json.dumps(setting) if setting else None,
        "task": "single_label",
        "train_score": val,
        "val_score": val,
        "test_score": test,
        "teacher_val_score": 0.9 if teachers else None,
        "band_low": None,
        "band_high": None,
        "status": "finished",
        "epochs": 4.0,
        "params": 1000,
        "error": None,
    }


def sweep_trials(seeds=(0, 1, 2)):
    rows = []
    for s in seeds:
        rows.append(run(f"t{s}", "big", s, 0.9, 0.9, ["teacher:sw"]))
        rows.append(run(f"b{s}", "small", s, 0.70, 0.70 + 0.01 * s, ["baseline"]))
        # T=1: best on validation, modest on test; T=4: worse on validation, best on test
        rows.append(
            run(f"k1-{s}", "small", s, 0.80, 0.75 + 0.01 * s, ["kd:sw"], [f"t{s}"], {"T": 1})
        )
        rows.append(run(f"k4-{s}", "small", s, 0.72, 0.95, ["kd:sw"], [f"t{s}"], {"T": 4}))
    return pd.DataFrame(rows)


def test_the_validation_choice_is_reported_not_the_best_test_setting():
    (cell,) = study_cells(sweep_trials(), "sw")
    assert cell.chosen == "T=1" and set(cell.settings) == {"T=1", "T=4"}
    assert list(cell.runs.trial_id) == ["k1-0", "k1-1", "k1-2"]
    table = study_table([cell])
    chosen = table[table.Split == CHOSEN_ROW].iloc[0]
    assert chosen["big"] == "T=1"
    test = table[table.Split == "test"].iloc[0]
    assert test["big"].startswith("0.760")  # T=1's test mean, not T=4's 0.95
    sens = sensitivity_table([cell])
    assert list(sens.Setting) == ["T=1", "T=4"] and list(sens.Chosen) == ["✓", ""]


def test_a_consistent_gain_is_better_and_the_summary_says_how_it_was_judged():
    (cell,) = study_cells(sweep_trials(), "sw")
    assert cell.gain.n == 3 and abs(cell.gain.mean - 0.05) < 1e-9
    row = summary_table([cell]).iloc[0]
    assert row.Verdict == "better" and row.n == 3 and row.Setting == "T=1"
    assert row["95% interval"].endswith("(t)") and row.Gain == "+0.050"


def test_two_seeds_give_no_verdict_and_every_study_is_in_the_tables():
    trials = sweep_trials(seeds=(0, 1))
    free = run("f0", "small", 0, 0.71, 0.72, ["kd:tf"], [], method="tfkd_virtual")
    free.update(method="tfkd_virtual", stage="student")
    trials = pd.concat([trials, pd.DataFrame([free])], ignore_index=True)
    out = tables(trials, ["sw", "tf"])
    summary = out["summary"][1]
    assert list(summary.Study) == ["sw", "tf"]
    assert set(summary.Verdict) == {"n too small"}
    assert summary[summary.Study == "tf"].iloc[0].Teacher == "no teacher"
    assert "sw.sensitivity" in out and "tf.sensitivity" not in out
    improvement = out["improvement"][1].set_index("Study")
    assert improvement.loc["sw", "Paired runs"] == 2
    assert improvement.loc["sw", "P(KD beats baseline)"] == "1.000"


def budget_trials():
    """Per seed and budget: a teacher, a baseline, a KD student; at 10% a mean teacher too."""
    rows = []
    for s in (0, 1, 2):
        for labels, base, kd in ((None, 0.80, 0.81), ("10%", 0.60, 0.70)):
            tag = labels or "all"
            rows.append(run(f"t{tag}{s}", "big", s, 0.9, 0.9, ["teacher:kd"]))
            rows.append(run(f"b{tag}{s}", "small", s, base, base + 0.01 * s, ["baseline"]))
            rows.append(run(f"k{tag}{s}", "small", s, kd, kd + 0.01 * s, ["kd:kd"], [f"t{tag}{s}"]))
        mt = run(f"m{s}", "small", s, 0.65, 0.66 + 0.01 * s, ["kd:mt"], [], method="mean_teacher")
        mt["method"] = "mean_teacher"
        rows.append(mt | {"ema_test_score": 0.68})
    trials = pd.DataFrame(rows)
    trials["labels"] = [None if "all" in t else "10%" for t in trials.trial_id]
    trials.loc[trials.trial_id.str.startswith("m"), "labels"] = "10%"
    for metric in ("balanced_acc", "f1"):
        trials[f"test_{metric}"] = trials.test_score - 0.1
    trials["ema_test_balanced_acc"] = trials["ema_test_f1"] = trials.get("ema_test_score")
    return trials


def test_each_label_budget_is_its_own_cell_paired_with_the_baseline_of_that_budget():
    trials = budget_trials()
    cells = study_cells(trials, "kd")
    assert [(c.student, c.budget) for c in cells] == [
        ("small (all labels)", "all"),
        ("small (10% labels)", "10%"),
    ]
    few = cells[1]
    assert sorted(few.baseline.trial_id) == ["b10%0", "b10%1", "b10%2"]
    assert few.gain.mean == pytest.approx(0.10) and few.gain.n == 3
    (mt,) = study_cells(trials, "mt")
    assert mt.student == "small (10% labels)" and mt.teacher == "no teacher"
    assert mt.gain.mean == pytest.approx(0.06)


def test_the_few_labels_table_shows_every_study_and_the_moving_average_per_budget():
    built = tables(budget_trials(), ["kd", "mt"])
    title, table = built["labels"]
    assert "label budget" in title
    assert list(table.columns) == [
        "Student", "Test metric", "no KD (baseline)", "kd", "mt", "mt (EMA)",
    ]  # fmt: skip
    few = table[table.Student == "small (10% labels)"].set_index("Test metric")
    assert few.loc["accuracy", "no KD (baseline)"].startswith("0.610")
    assert few.loc["accuracy", "kd"].startswith("0.710")
    assert few.loc["accuracy", "mt"].startswith("0.670")
    assert few.loc["accuracy", "mt (EMA)"].startswith("0.680")
    assert few.loc["balanced accuracy", "kd"].startswith("0.610")
    full = table[table.Student == "small (all labels)"].set_index("Test metric")
    assert full.loc["accuracy", "mt"] == "—"  # no mean-teacher run with every label
    baselines = built["baseline"][1]
    assert list(baselines.Student) == ["small (all labels)", "small (10% labels)"]
    assert "labels" not in tables(sweep_trials(), ["sw"])  # no budgets, no such table


def test_a_grid_still_running_compares_like_with_like_and_keeps_its_pending_columns():
    """Seed 0 of one KD cell finished, three baseline seeds finished, another teacher's KD
    runs all pending: the summary's baseline is seed 0's, as the gain pairs; the study table
    says how many seeds each value holds and keeps the pending teacher's column."""
    rows = [run("t0", "big", 0, 0.9, 0.9, ["teacher:st"]), run("u0", "huge", 0, 0.9, 0.9, [])]
    rows[1]["roles"] = ["teacher:st"]
    rows += [run(f"b{s}", "small", s, 0.5, 0.5 + 0.1 * s, ["baseline"]) for s in (0, 1, 2)]
    rows.append(run("k0", "small", 0, 0.6, 0.7, ["kd:st"], ["t0"]))
    for s in (1, 2):
        rows.append(run(f"k{s}", "small", s, None, None, ["kd:st"], ["t0"]) | {"status": "pending"})
    for s in (0, 1, 2):
        rows.append(run(f"h{s}", "small", s, None, None, ["kd:st"], ["u0"]) | {"status": "pending"})
    out = tables(pd.DataFrame(rows), ["st"])
    row = out["summary"][1].iloc[0]
    shown = (row["KD test"], row["Baseline test"], row.Gain, row.n)
    assert shown == ("0.700", "0.500", "+0.200", 1)
    study = out["st"][1]
    test = study[study.Split == "test"].iloc[0]
    assert test["big"] == "0.700 (n=1)"
    assert test["no KD (baseline)"] == "0.600 ± 0.100 (n=3)"
    assert test["huge"] == "pending"


def test_empty_tables_say_so_no_baseline_file_without_baselines_and_a_failed_teacher_why():
    """Only a teacher ran, and it failed; the job has no baseline (`baseline: false`)."""
    from kdray.export.markdown import render_tables
    from kdray.export.report import html_table

    error = "AssertionError: Input height (32) doesn't match model (224)."
    teacher = run("t0", "vit", 0, None, None, ["teacher:st"]) | {"status": "failed"}
    student = run("k0", "small", 0, None, None, ["kd:st"], ["t0"]) | {"status": "failed"}
    trials = pd.DataFrame([teacher | {"error": error}, student | {"error": "not started"}])
    texts = render_tables(trials, ["st"])
    assert "baseline.md" not in texts
    assert texts["teachers.md"].endswith("_no finished trials_\n")
    assert "paired by seed)\n\n_no finished trials_\n" in texts["summary.md"]
    why = f"teacher vit failed (seed 0): {error[:-1]}; its students did not start"
    assert "| small | test | failed |\n" in texts["st.md"]
    assert "no KD (baseline)" not in texts["st.md"]  # no column of dashes for no baseline
    assert texts["st.md"].endswith(f"\n_{why}_\n")
    title, table = tables(trials, ["st"])["st"]
    assert why.replace("'", "&#x27;") in html_table(table)


def test_a_gain_that_rounds_to_zero_prints_without_a_sign():
    from kdray.results.stats import signed

    assert [signed(v) for v in (-0.0001, 0.0, 0.0004, -0.012, 0.012)] == [
        "0.000", "0.000", "0.000", "-0.012", "+0.012",
    ]  # fmt: skip
    rows = [run("t0", "big", 0, 0.9, 0.9, ["teacher:st"])]
    rows.append(run("b0", "small", 0, 0.5, 0.5, ["baseline"]))
    rows.append(run("k0", "small", 0, 0.5, 0.5 - 1e-9, ["kd:st"], ["t0"]))
    row = summary_table(study_cells(pd.DataFrame(rows), "st")).iloc[0]
    assert row.Gain == "0.000"
