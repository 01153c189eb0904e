"""`report.html`: tables and inline figures, on experiment folders written by hand (no Ray)."""

import html
import re

import pyarrow.parquet as pq
from typer.testing import CliRunner

from kdray.cli import app
from kdray.export.report import render_report
from kdray.export.write import export
from kdray.results.tables import EPOCH_SCHEMA, write_results
from tests.test_export import fake_experiment


def sections(page: str) -> dict[str, str]:
    """`<h2>` heading -> the HTML up to the next heading."""
    parts = re.split(r"<h2>(.*?)</h2>", page)
    return {html.unescape(parts[i]): parts[i + 1] for i in range(1, len(parts), 2)}


def html_rows(fragment: str) -> list[list[str]]:
    table = fragment[fragment.index("<table>") : fragment.index("</table>")]
    return [
        [html.unescape(c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)]
        for row in re.findall(r"<tr>(.*?)</tr>", table)
    ]


def markdown_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("|") and "---" not in line]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def has_role(trials, role):
    return trials.roles.apply(lambda roles: role in list(roles))


def load(exp):
    trials = write_results(exp).to_pandas()
    epochs = pq.read_table(exp.results_dir / "epochs.parquet").to_pandas()
    return trials, epochs


def assert_self_contained(page: str) -> None:
    lowered = page.lower()
    for needle in ("<script", 'src="http', "<img", "<link", "<iframe", "data:image"):
        assert needle not in lowered, needle
    assert not re.search(r'href="(?!#)', page)  # only references inside the page


def test_report_holds_every_table_of_the_markdown_export_and_one_figure_each(tmp_path):
    exp = fake_experiment(tmp_path, seeds=(0, 1))
    out = tmp_path / "out"
    written = export(exp.root, out)
    assert written["report.html"] == out / "report.html"
    page = (out / "report.html").read_text()
    assert "<title>kdray report: tiny</title>" in page and "written 20" in page
    found = sections(page)
    for name in ("teachers", "baseline", "normal", "reverse", "defective", "summary"):
        text = (out / f"{name}.md").read_text().split("\n## ")[0]  # summary.md: its first table
        heading = text.splitlines()[0].removeprefix("# ")
        assert html_rows(found[heading]) == markdown_rows(text), name
    # the numbers themselves: normal KD test accuracy, mean ± std over the two seeds
    trials, _ = load(exp)
    kd = trials[has_role(trials, "kd:normal")].test_acc
    normal = html_rows(found["normal (kd): student x teacher accuracy"])
    assert normal[3][:3] == ["resnet10t", "test", f"{kd.mean():.3f} ± {kd.std():.3f}"]
    # gain bars + a heatmap per study + learning curves; two seeds give error bars
    assert page.count("<svg") == 5
    gain = found["KD gain over each student's baseline (test accuracy, paired by seed)"]
    assert "± std over seeds" in gain and 'id="gain-LineCollection' in gain  # the error bars
    for study in ("normal", "reverse", "defective"):
        assert found[f"{study} (kd): student x teacher accuracy"].count("<svg") == 1
    assert "band [0.50, 0.65]" in found["Learning curves"]  # the defective teachers' band
    assert_self_contained(page)
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))  # several inline SVGs, no clashing ids


def test_studies_absent_from_the_job_have_no_section_and_one_seed_no_error_bars(tmp_path):
    exp = fake_experiment(tmp_path, seeds=(0,), studies=("normal",))
    trials, epochs = load(exp)
    page = render_report(trials, epochs, ["normal"], "tiny")
    found = sections(page)
    assert "normal (kd): student x teacher accuracy" in found
    assert "reverse" not in page and "defective" not in page and "band [" not in page
    assert page.count("<svg") == 3  # gain, the normal heatmap, curves
    gain = found["KD gain over each student's baseline (test accuracy, paired by seed)"]
    assert "± std over seeds" not in gain and "LineCollection" not in gain
    kd = trials[has_role(trials, "kd:normal")].test_acc.iloc[0]
    assert f"{kd:.3f}" in found["normal (kd): student x teacher accuracy"].split("<table>")[0]


def test_a_failed_baseline_shows_a_dash_and_the_report_still_renders(tmp_path):
    exp0 = fake_experiment(tmp_path / "a", seeds=(0,), studies=("normal",))
    victim = next(r.run_id for r in exp0.plan().runs.values() if "baseline" in r.roles)
    exp = fake_experiment(tmp_path / "b", seeds=(0,), studies=("normal",), fail=victim)
    page = (export(exp.root, tmp_path / "out")["report.html"]).read_text()
    found = sections(page)
    normal = html_rows(found["normal (kd): student x teacher accuracy"])
    assert normal[0][-1] == "no KD (baseline)"
    assert [row[-1] for row in normal[1:]] == ["—", "—", "—"]
    summary = html_rows(
        found["KD gain over each student's baseline (test accuracy, paired by seed)"]
    )
    row = dict(zip(summary[0], summary[1], strict=True))
    assert (row["Baseline test"], row["Gain"], row["Verdict"]) == ("—", "—", "n too small")
    assert victim in found["Unfinished trials"]
    assert page.count("<svg") == 3
    assert_self_contained(page)


def test_failed_runs_stay_out_of_the_figures(tmp_path):
    exp = fake_experiment(tmp_path, seeds=(0,), studies=("normal",))
    trials, epochs = load(exp)
    kd = has_role(trials, "kd:normal")
    trials.loc[kd, "status"] = "failed"
    trials.loc[kd, ["train_acc", "val_acc", "test_acc"]] = float("nan")
    page = render_report(trials, epochs, ["normal"], "tiny")  # its epochs are still there
    found = sections(page)
    assert "resnet10t ← resnet18" not in page  # no curve, no bar, no heatmap row
    assert "<svg" not in found["normal (kd): student x teacher accuracy"]
    assert "<td>failed</td>" in found["normal (kd): student x teacher accuracy"]  # its column
    assert (
        "<svg" not in found["KD gain over each student's baseline (test accuracy, paired by seed)"]
    )
    assert found["Learning curves"].count("<svg") == 1
    assert page.count("<svg") == 1


def test_an_empty_epochs_table_gives_no_learning_curves(tmp_path):
    exp = fake_experiment(tmp_path, seeds=(0,))
    trials, _ = load(exp)
    epochs = EPOCH_SCHEMA.empty_table().to_pandas()
    page = render_report(trials, epochs, ["normal", "reverse", "defective"], "tiny")
    assert "<svg" not in sections(page)["Learning curves"]
    assert "no epochs recorded" in page
    assert page.count("<svg") == 4


def test_cli_export_prints_the_report(tmp_path):
    exp = fake_experiment(tmp_path, seeds=(0,), studies=("normal",))
    result = CliRunner().invoke(app, ["export", str(exp.root), "--out", str(tmp_path / "x")])
    assert result.exit_code == 0 and "report.html" in result.output
    assert (tmp_path / "x" / "report.html").is_file()
