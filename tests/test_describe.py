"""What `kdray validate` says of each study: its KD runs as the product of its axes."""

from __future__ import annotations

from kdray.spec.describe import study_lines
from kdray.spec.load import parse_job
from kdray.spec.plan import make_plan
from tests.conftest import tiny_job_dict


def _lines(tmp_path, study: dict, **job) -> list[str]:
    raw = tiny_job_dict(tmp_path, studies={"s": study}, **job)
    parsed = parse_job(raw)
    return study_lines(parsed, make_plan(parsed))


def test_a_study_without_teachers_counts_no_teacher_axis(tmp_path):
    (line,) = _lines(tmp_path, {"teachers": [], "students": ["test_resnet"],
                                "method": {"name": "tfkd_virtual"}}, seeds=[0, 1])  # fmt: skip
    assert line.endswith("2 KD runs = 1 student x 2 seeds"), line


def test_teacher_entries_that_are_one_run_are_said_to_be(tmp_path):
    study = {"teachers": ["resnet10t", "test_resnet"], "students": ["test_resnet"]}
    (line,) = _lines(tmp_path, study)
    assert line.endswith("= 1 student x 2 teachers x 1 seed"), line
    (line,) = _lines(tmp_path, {**study, "teachers": ["test_resnet", "self"]}, baseline=True)
    assert line.endswith(
        "1 KD run = 1 student x 2 teachers x 1 seed (1 the same run as another, trained once)"
    ), line
