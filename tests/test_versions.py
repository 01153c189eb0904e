"""The versions that shape results: recorded at creation, compared on resume, kept in the
tables. No Ray: `kdray resume` stops at the grid (a stand-in `run_experiment`)."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from kdray.cli import app
from kdray.results.tables import write_results
from kdray.spec.load import parse_job
from kdray.store import versions
from kdray.store.experiment import Experiment
from tests.conftest import tiny_job_dict


def _experiment(tmp_path) -> Experiment:
    return Experiment.create(parse_job(tiny_job_dict(tmp_path)))


def test_a_new_experiment_records_the_versions_it_starts_with(tmp_path):
    exp = _experiment(tmp_path)
    saved = json.loads((exp.root / "versions.json").read_text())
    assert saved == versions.current()
    for name in ("python", "torch", "torchvision", "timm", "albumentations", "numpy", "ray"):
        assert saved[name], name
    # running the same job again resumes it: what it started with is kept
    (exp.root / "versions.json").write_text(json.dumps({**saved, "numpy": "1.0.0"}))
    Experiment.create(parse_job(tiny_job_dict(tmp_path)))
    assert versions.recorded(exp.root)["numpy"] == "1.0.0"


def _resume_output(exp: Experiment, monkeypatch) -> str:
    import kdray.grid.run
    from kdray.grid.tune import ResourceError

    def no_grid(*args, **kwargs):
        raise ResourceError("stopped before the grid (test)")

    monkeypatch.setattr(kdray.grid.run, "run_experiment", no_grid)
    result = CliRunner().invoke(app, ["resume", str(exp.root)])
    assert result.exit_code == 2, result.output
    return result.output


def test_resume_with_other_versions_warns_once_naming_each_package(tmp_path, monkeypatch):
    exp = _experiment(tmp_path)
    now = versions.current()
    started = {**now, "numpy": "1.26.4", "albumentations": "1.4.0", "gone": "0.1"}
    del started["timm"]
    (exp.root / "versions.json").write_text(json.dumps(started))
    output = _resume_output(exp, monkeypatch)
    lines = [line for line in output.splitlines() if "versions.json" in line]
    assert len(lines) == 1 and lines[0].startswith("warning"), output
    for change in (
        f"numpy 1.26.4 -> {now['numpy']}",
        f"albumentations 1.4.0 -> {now['albumentations']}",
        f"timm - -> {now['timm']}",
        "gone 0.1 -> -",
    ):
        assert change in lines[0], change
    assert "torch " not in lines[0]  # unchanged packages are not listed


def test_resume_with_the_same_versions_or_none_recorded_says_nothing(tmp_path, monkeypatch):
    exp = _experiment(tmp_path)
    assert "warning" not in _resume_output(exp, monkeypatch)
    (exp.root / "versions.json").unlink()  # a folder made before kdray recorded versions
    assert "warning" not in _resume_output(exp, monkeypatch)


def test_trials_parquet_metadata_holds_the_recorded_versions(tmp_path):
    exp = _experiment(tmp_path)
    write_results(exp)
    metadata = pq.read_schema(exp.results_dir / "trials.parquet").metadata
    assert json.loads(metadata[b"kdray.versions"]) == versions.recorded(exp.root)


def test_another_cpu_of_the_same_isa_is_named_on_resume_and_older_folders_are_not(
    tmp_path, monkeypatch
):
    exp = _experiment(tmp_path)
    now = versions.current()
    assert {"cpu", "cpu.isa", "cpu.flags", "opencv.dispatch"} <= set(now)
    started = {**now, "cpu": "Intel(R) Xeon(R) Platinum 8480+", "cpu.flags": "avx2 amx_bf16"}
    (exp.root / "versions.json").write_text(json.dumps(started))
    output = _resume_output(exp, monkeypatch)
    (line,) = [ln for ln in output.splitlines() if "versions.json" in ln]
    assert f"cpu.flags avx2 amx_bf16 -> {now['cpu.flags']}" in line, line
    assert "Platinum 8480+ ->" in line and "cpu.isa" not in line  # the same ISA: not listed
    older = {k: v for k, v in now.items() if k not in versions.MACHINE_KEYS}
    (exp.root / "versions.json").write_text(json.dumps(older))  # before dispatch was recorded
    assert "warning" not in _resume_output(exp, monkeypatch)


def test_the_blas_line_does_not_depend_on_load_order(monkeypatch):
    """threadpoolctl lists the loaded BLAS libraries in load order, which differs between a
    run and its resume: the recorded line must not, or every resume warns of a difference."""
    import threadpoolctl

    libraries = [
        {"user_api": "blas", "internal_api": "openblas", "version": v, "architecture": a}
        for v, a in (("0.3.31", "SkylakeX"), ("0.3.15", "Zen"), ("0.3.30", "SkylakeX"))
    ]
    openmp = {"user_api": "openmp", "internal_api": "openmp", "version": None}
    lines = set()
    for order in (libraries, libraries[::-1], [openmp, *libraries[1:], libraries[0]]):
        monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda order=order: order)
        lines.add(versions.dispatch()["blas"])
    assert lines == {"openblas 0.3.15 Zen; openblas 0.3.30 SkylakeX; openblas 0.3.31 SkylakeX"}


def test_onednn_says_which_isa_and_kernels_it_runs_and_prints_nothing(capfd):
    import subprocess
    import sys

    import torch

    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    here = versions.onednn_dispatch()
    assert here["onednn.isa"] and "onednn_verbose" not in capfd.readouterr().out
    assert [p.split()[0] for p in here["onednn.conv"].split(", ")] == [
        "forward_training", "backward_data", "backward_weights",
    ]  # fmt: skip
    if "avx512f" not in versions.dispatch()["cpu.flags"]:
        pytest.skip("this CPU has no AVX-512 to cap")
    probe = "import json, kdray.store.versions as v; print(json.dumps(v.onednn_dispatch()))"
    capped = subprocess.run(
        [sys.executable, "-c", probe], env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    capped = json.loads(capped.stdout)
    assert capped["onednn.isa"] == "Intel AVX2"
    assert capped["onednn.conv"].count("jit:avx2") == 3
    assert versions.differences(here, capped)  # what a resume would name


def test_mkl_says_which_code_path_it_runs_and_prints_nothing(capfd):
    """On an Intel Xeon with AMX, `MKL_CBWR=AVX2` moves the quickstart's numbers by up to 5
    points through the classifier head alone (`bench.kernels`): MKL's path is recorded."""
    import subprocess
    import sys

    import torch

    if not torch.backends.mkl.is_available():
        pytest.skip("this torch has no MKL")
    here = versions.mkl_dispatch()
    assert here["mkl.isa"] and "MKL_VERBOSE" not in capfd.readouterr().out
    assert "GHz" not in here["mkl.isa"]  # the banner's clock speed varies: never a difference
    probe = "import json, kdray.store.versions as v; print(json.dumps(v.mkl_dispatch()))"
    capped = subprocess.run(
        [sys.executable, "-c", probe], env={**os.environ, "MKL_CBWR": "AVX2"},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(capped.stdout) == {
        "mkl.isa": "Intel(R) Advanced Vector Extensions 2 (Intel(R) AVX2) enabled processors"
    }
    assert "mkl.isa" in versions.dispatch()
