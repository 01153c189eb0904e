import pytest
import yaml
from typer.testing import CliRunner

from kdray.cli import app
from kdray.spec.job import JobError
from kdray.spec.load import apply_override, load_job, parse_job
from tests.conftest import REPO, tiny_job_dict

runner = CliRunner()


def problems_of(raw, overrides=()):
    try:
        parse_job(raw, overrides)
    except JobError as exc:
        return exc.problems
    raise AssertionError("the job was accepted")


def test_quickstart_job_is_valid():
    job = load_job(REPO / "jobs" / "quickstart.yaml")
    assert set(job.studies) == {"normal", "reverse", "defective"}
    assert job.data.kind == "synthetic"


def test_overrides_are_parsed_as_yaml_and_nest(tmp_path):
    raw = tiny_job_dict(tmp_path)
    job = parse_job(raw, ["train.epochs=1", "data.image_size=24", "seeds=[0, 1]"])
    assert job.train.epochs == 1 and job.data.image_size == 24 and job.seeds == [0, 1]


def test_override_into_a_scalar_is_refused():
    raw = {"train": {"epochs": 3}}
    try:
        apply_override(raw, "train.epochs.x=1")
    except JobError as exc:
        assert "train.epochs is not a section" in exc.problems[0]
    else:
        raise AssertionError("accepted")


def test_each_problem_names_its_field(tmp_path):
    raw = tiny_job_dict(tmp_path)
    lines = problems_of(
        raw,
        ["train.epochs=0", "train.optimizer=rmsprop", "resources.gpus_per_worker=-1", "trian=1"],
    )
    text = "\n".join(lines)
    assert len(lines) == 4
    assert "train.epochs: Input should be greater than or equal to 1 (got 0)" in text
    assert "train.optimizer:" in text and "'adam'" in text
    assert "resources.gpus_per_worker:" in text
    assert "trian: unknown field" in text


def test_defective_needs_a_band_and_a_band_needs_a_model_teacher(tmp_path):
    raw = tiny_job_dict(tmp_path)
    raw["studies"] = {
        "defective": {"teachers": ["resnet10t"], "students": ["test_resnet"]},
        "own": {
            "teachers": ["self"],
            "students": ["test_resnet"],
            "teacher_val_band": [0.5, 0.6],
        },
        "free": {
            "students": ["test_resnet"],
            "method": {"name": "tfkd_virtual"},
            "teacher_val_band": [0.5, 0.6],
        },
    }
    text = "\n".join(problems_of(raw))
    assert "studies.defective.teacher_val_band: required" in text
    assert "studies.own.teacher_val_band: a `self` teacher" in text
    assert "studies.free.teacher_val_band: this study has no teacher to stop early" in text
    # a band on a model teacher is what makes a study's teachers defective, whatever its name
    raw["studies"] = {
        "normal": {
            "teachers": ["resnet10t"],
            "students": ["test_resnet"],
            "teacher_val_band": [0.5, 0.6],
        }
    }
    assert parse_job(raw).studies["normal"].teacher_val_band == (0.5, 0.6)


def test_band_must_be_ordered(tmp_path):
    raw = tiny_job_dict(tmp_path)
    raw["studies"] = {
        "defective": {
            "teachers": ["resnet10t"],
            "students": ["test_resnet"],
            "teacher_val_band": [0.7, 0.5],
        }
    }
    assert any("low < high" in line for line in problems_of(raw))


def test_unknown_method_and_model(tmp_path):
    raw = tiny_job_dict(tmp_path)
    raw["studies"] = {"magic": {"teachers": ["resnet10t"], "students": ["resnet10t"]}}
    assert parse_job(raw).studies["magic"].method_name() == "kd"  # study names are free
    raw["studies"]["magic"]["method"] = {"name": "magic"}
    (line,) = problems_of(raw)
    assert line.startswith("studies.magic.method:") and "'magic'" in line and "'kd'" in line
    raw["studies"] = {"normal": {"teachers": ["resnet9000"], "students": ["resnet10t"]}}
    assert "'resnet9000' is not a timm model" in problems_of(raw)[0]
    for model in ("resnet3d-d10", "unet3d"):  # on 2D data: said so, no timm look-alikes
        raw["studies"]["normal"] = {"teachers": ["resnet10t"], "students": [model]}
        (line,) = problems_of(raw)
        assert f"'{model}' is a 3D network and this data is 2D" in line and "timm" in line


def test_pretrained_weights_must_exist(tmp_path):
    raw = tiny_job_dict(tmp_path)
    raw["pretrained"] = {"resnet10t": str(tmp_path / "missing.pth")}
    assert "missing.pth does not exist" in problems_of(raw)[0]


def test_cli_validate_exits_2_with_one_line_per_problem_and_no_traceback(tmp_path):
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(tiny_job_dict(tmp_path)))
    ok = runner.invoke(app, ["validate", str(job_file)])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(
        app, ["validate", str(job_file), "--set", "train.lr=-1", "--set", "seeds=[1, 1]"]
    )
    assert bad.exit_code == 2
    assert "Traceback" not in bad.output
    lines = [line for line in bad.output.splitlines() if line.startswith("error")]
    assert len(lines) == 2
    assert any("train.lr" in line for line in lines)
    assert any("seeds: seeds must be distinct" in line for line in lines)


def test_cli_validate_reports_a_missing_or_broken_file(tmp_path):
    missing = runner.invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "no such job file" in missing.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    result = runner.invoke(app, ["validate", str(broken)])
    assert result.exit_code == 2 and "not valid YAML" in result.output


def test_augmentation_is_declared_as_albumentations_transforms(tmp_path):
    import numpy as np

    from kdray.data.augment import build_train_augmentation

    raw = tiny_job_dict(tmp_path)
    raw["train"]["augment"] = [
        {"name": "Affine", "rotate": [-5, 5], "p": 1.0},
        {"name": "RandomBrightnessContrast", "brightness_limit": 0.2, "p": 1.0},
    ]
    job = parse_job(raw)
    image = np.random.default_rng(0).integers(0, 255, (16, 16, 1), dtype=np.uint8)
    a = build_train_augmentation(job.train.augment, seed=1)(image=image)["image"]
    b = build_train_augmentation(job.train.augment, seed=1)(image=image)["image"]
    assert np.array_equal(a, b) and not np.array_equal(a, image)
    assert build_train_augmentation(False, seed=1) is None

    raw["train"]["augment"] = [{"name": "Flop"}, {"name": "HorizontalFlip", "p": 3}]
    (line,) = problems_of(raw)
    assert line.startswith("train.augment: step 0: 'Flop' is not an albumentations transform")
    assert "step 1: HorizontalFlip: p Input should be less than or equal to 1" in line


def test_fractional_gpus_only_for_single_worker_trials(tmp_path):
    raw = tiny_job_dict(tmp_path)
    raw["resources"] = {"gpus_per_worker": 0.5, "workers_per_trial": 2}
    assert "fractional gpus_per_worker works for single-worker trials only" in problems_of(raw)[0]
    raw["resources"] = {"gpus_per_worker": 0.5, "workers_per_trial": 1}
    assert parse_job(raw).resources.gpus_per_worker == 0.5


@pytest.mark.parametrize(
    ("baseline", "line"),
    [
        (  # a mapping with a typo: the searched baseline's error alone, no branch names
            {"search": {"space": {"lr": {"loguniform": [1e-4, 1e-2]}}, "samples:2": None}},
            "baseline.search.samples:2: unknown field",
        ),
        ("maybe", "baseline: Input should be a valid boolean, unable to interpret input"),
    ],
)
def test_a_bad_baseline_is_one_line_from_the_branch_it_was_meant_for(tmp_path, baseline, line):
    raw = tiny_job_dict(tmp_path)
    raw["baseline"] = baseline
    (said,) = problems_of(raw)
    assert said.startswith(line), said
