"""The docs cannot rot: the site builds strictly (broken links, missing pages), the generated
reference parts match the code, and every job file shown in README.md and docs/ validates."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pyarrow as pa
import pytest

from docs import gen_reference
from docs.gen.results import columns_table, expand
from kdray.spec.base import JobError
from kdray.spec.load import parse_job, read_yaml
from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
YAML_BLOCK = re.compile(r"^```yaml[^\n]*\n(.*?)^```", re.M | re.S)
FRAGMENT = "# fragment"  # a block's first line: part of a job file, not a whole one


def yaml_blocks() -> list[tuple[str, str]]:
    """(page:line, text) of every ```yaml block in the README and the docs."""
    blocks = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in YAML_BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            blocks.append((f"{page.relative_to(REPO)}:{line}", match.group(1)))
    return blocks


JOBS = [(where, text) for where, text in yaml_blocks() if not text.startswith(FRAGMENT)]


@pytest.mark.parametrize(("where", "text"), JOBS, ids=[where for where, _ in JOBS])
def test_each_job_file_shown_validates(where, text):
    # the schema and the checks that need timm, as `kdray validate` runs them first; the data
    # is not opened (examples name folders that exist on the reader's machine, not here)
    try:
        parse_job(read_yaml(text))
    except JobError as exc:
        pytest.fail(f"{where}: the job does not validate: {exc.problems}")


def test_the_pages_show_whole_jobs_and_mark_fragments():
    fragments = [where for where, text in yaml_blocks() if text.startswith(FRAGMENT)]
    assert len(JOBS) >= 3 and len(fragments) >= 3  # both kinds are found, so both are checked


def test_the_generated_parts_match_the_code():
    stale = gen_reference.stale_pages()
    assert stale == [], f"{stale} are stale: run .venv/bin/python docs/gen_reference.py"


def test_the_job_reference_describes_each_section_once():
    from docs.gen import job_file

    headings = re.findall(r"^#+ (.+)$", job_file.reference(), re.M)
    assert sorted(h for h in set(headings) if headings.count(h) > 1) == []
    assert "data.kind: decathlon" in headings and "data.patch_augment" in headings


def test_a_column_without_a_meaning_stops_the_generator():
    schema = pa.schema([pa.field("trial_id", pa.string()), pa.field("new_column", pa.int64())])
    with pytest.raises(ValueError, match="new_column"):
        columns_table(schema, [("trial_id", "the run id")], "trials.parquet")
    assert expand("{val,test}_x y") == ["val_x", "test_x", "y"]


def test_the_site_builds_strictly(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # Material's banner about MkDocs 2
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "job-file" / "index.html").is_file()


def test_the_readme_is_a_landing_page_whose_links_resolve():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 250
    assert lines[1].startswith("python3 -m venv .venv && ") and lines[1].endswith("quickstart.yaml")
    assert lines[2].endswith(".venv/bin/pytest -q")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if not target.startswith(("http://", "https://")):
            assert (REPO / target).exists(), f"README.md links to {target}, which is missing"


def test_the_generator_names_a_part_it_does_not_know():
    with pytest.raises(gen_reference.UnknownPartError, match="no-such-part"):
        gen_reference.render("<!-- generated: no-such-part -->\nx\n<!-- end generated -->")
