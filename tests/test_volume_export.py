"""Exports of 3D students without Ray: ONNX files of a tiny 3D segmenter and a tiny 3D
classifier (their model.pt written as a finished run writes it), checked against PyTorch on
the validation volumes the way kdray evaluates them; and the report's axial, coronal and
sagittal slices through the foreground's centre."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from kdray.data import prepare_data
from kdray.data.volume_cache import load_volumes
from kdray.export import onnx as deploy
from kdray.export.onnx_volumes import OnnxPredictor
from kdray.export.volume_views import (
    foreground_centre,
    predicted_views,
    view_aspects,
    view_slices,
    volume_examples_figure,
)
from kdray.spec.load import parse_job
from kdray.store.experiment import Experiment
from kdray.store.model_file import load_model, save_model
from kdray.tasks import get_task
from kdray.tasks.sliding_window import sliding_window_logits
from kdray.tasks.volume_models import create_volume_model
from kdray.train.volume_eval import predict_volumes
from tests.test_volume_classification import organ_npz

SEGMENTER, CLASSIFIER = "unet3d-c2.4.8-s2.2-r1", "densenet3d-f4-g4-b1.1"
SEG_TEACHER = "unet3d-c4.8.16-s2.2"


def segmentation_experiment(tmp_path):
    """Phantoms of 24 x 20 x 8 voxels, a 16 x 16 x 8 patch: validation slides two windows
    along the first two axes."""
    job = parse_job(
        {
            "name": "vol-onnx",
            "storage": str(tmp_path / "runs"),
            "data": {"kind": "synthetic_volumes", "shape": [24, 20, 8], "patch": [16, 16, 8],
                     "train_size": 2, "valid_size": 2, "test_size": 1},
            "studies": {"s": {"teachers": [SEG_TEACHER], "students": [SEGMENTER],
                              "method": {"name": "pixel_kd"}}},
        }
    )  # fmt: skip
    return job, Experiment.create(job)


def classification_experiment(tmp_path):
    path = organ_npz(tmp_path / "organ.npz", counts=(6, 5, 3))
    job = parse_job(
        {
            "name": "cls-onnx",
            "storage": str(tmp_path / "runs"),
            "data": {"kind": "medmnist3d", "path": str(path)},
            "studies": {"s": {"teachers": ["resnet3d-d10-w0.25"], "students": [CLASSIFIER],
                              "method": {"name": "kd"}}},
        }
    )  # fmt: skip
    return job, Experiment.create(job)


def save_finished(exp: Experiment, job, model_name: str, method: str | None = None) -> str:
    """A run of `model_name` (and `method`) with an untrained `model.pt` as `run_loop.finish`
    writes it; returns its run id."""
    info = prepare_data(job.data, exp.data_dir)
    runs = exp.plan().runs.values()
    spec = next(s for s in runs if s.model == model_name and method in (None, s.method))
    torch.manual_seed(len(spec.run_id))
    model = create_volume_model(model_name, info.num_classes, info.channels)
    exp.run_dir(spec.run_id).mkdir(parents=True, exist_ok=True)
    save_model(
        exp.run_dir(spec.run_id) / "model.pt", model, model=model_name, task=info.task,
        num_classes=info.num_classes, in_chans=info.channels, classes=info.classes,
        mean=info.mean, std=info.std, image_size=info.image_size, rank=3, patch=info.patch,
    )  # fmt: skip
    return spec.run_id


def test_a_3d_segmenter_exports_on_its_patch_and_slides_like_pytorch(tmp_path):
    import onnx
    import onnxruntime

    job, exp = segmentation_experiment(tmp_path)
    run_id = save_finished(exp, job, SEGMENTER)
    result = deploy.export_onnx(exp.root, run_id, tmp_path / "out")
    assert (result.images, result.unit) == (2, "volumes")
    assert result.max_abs_diff <= deploy.TOLERANCE and result.agreement == 1.0
    assert result.latency_ms > 0
    loaded = onnx.load(result.path)
    meta = {p.key: p.value for p in loaded.metadata_props}
    assert (meta["spatial_rank"], json.loads(meta["patch"])) == ("3", [16, 16, 8])
    assert meta["task"] == "segmentation" and meta["model"] == SEGMENTER
    assert json.loads(meta["classes"]) == ["background", "organ", "lesion"]
    dims = [d.dim_value or d.dim_param for d in loaded.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [1, 16, 16, 8] and isinstance(dims[0], str)  # a dynamic batch
    # independently of the export's check: a whole validation volume, three windows at once
    model, _ = load_model(exp.run_dir(run_id) / "model.pt")
    volume = load_volumes(prepare_data(job.data, exp.data_dir).path, "valid")[0]
    x = torch.from_numpy(np.asarray(volume.image, dtype=np.float32))[None, None]
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    pytorch = sliding_window_logits(model, x, (16, 16, 8), sw_batch_size=3)
    runtime = sliding_window_logits(OnnxPredictor(session), x, (16, 16, 8), sw_batch_size=3)
    assert runtime.shape == (1, 3, 24, 20, 8)
    assert (runtime - pytorch).abs().max() <= 1e-4


def test_a_3d_classifier_exports_on_its_input_and_agrees_on_every_volume(tmp_path):
    import onnx

    job, exp = classification_experiment(tmp_path)
    run_id = save_finished(exp, job, CLASSIFIER)
    result = deploy.export_onnx(exp.root, run_id, tmp_path / "out")
    assert (result.images, result.unit) == (5, "volumes")
    assert result.max_abs_diff <= deploy.TOLERANCE and result.agreement == 1.0
    meta = {p.key: p.value for p in onnx.load(result.path).metadata_props}
    assert json.loads(meta["patch"]) == [16, 16, 16] and meta["task"] == "single_label"


def test_a_3d_file_that_disagrees_is_removed_and_says_volumes(tmp_path, monkeypatch):
    job, exp = classification_experiment(tmp_path)
    run_id = save_finished(exp, job, CLASSIFIER)
    monkeypatch.setattr(deploy, "TOLERANCE", -1.0)  # nothing can pass
    with pytest.raises(deploy.DeployError, match="on 5 validation volumes"):
        deploy.export_onnx(exp.root, run_id, tmp_path / "out")
    assert not (tmp_path / "out" / "onnx" / f"{run_id}.onnx").exists()


def test_a_network_the_exporter_refuses_is_one_line_naming_the_model(tmp_path, monkeypatch):
    job, exp = classification_experiment(tmp_path)
    run_id = save_finished(exp, job, CLASSIFIER)

    def refuse(*args, **kwargs):  # torch's export error says its step, its cause the op
        try:
            raise RuntimeError("Unsupported: aten::grid_sampler_3d\nwith a long trace")
        except RuntimeError as cause:
            raise ValueError("\x1b[96mstep 1/3\x1b[0m failed\nnext steps: ...") from cause

    monkeypatch.setattr(torch.onnx, "export", refuse)
    with pytest.raises(deploy.DeployError) as caught:
        deploy.export_onnx(exp.root, run_id, tmp_path / "out")
    assert str(caught.value) == (
        f"--onnx {run_id}: {CLASSIFIER} does not export to ONNX "
        "(Unsupported: aten::grid_sampler_3d)"
    )


def test_the_three_views_cut_through_the_centre_of_a_known_box():
    mask = np.zeros((20, 16, 10), np.int8)  # RAS+ axes x, y, z
    mask[4:11, 6:11, 2:7] = 1  # centre (7, 8, 4)
    mask[4:11, 6:11, 5:7] = 2  # another class inside: the foreground is both
    assert foreground_centre(mask) == (7, 8, 4)
    axial, coronal, sagittal = view_slices(mask, (7, 8, 4))
    # each slice fixes its axis at the centre; its later axis runs up the rows
    box = np.zeros((16, 20), bool)
    box[6:11, 4:11] = True  # rows y, columns x
    assert np.array_equal(axial > 0, box)
    assert coronal.shape == (10, 20) and np.array_equal(coronal > 0, np.pad(
        np.ones((5, 7), bool), ((2, 3), (4, 9))))  # fmt: skip
    assert sagittal.shape == (10, 16) and (sagittal > 0).sum() == 5 * 5
    assert set(np.unique(coronal[5:7, 4:11])) == {2}  # the upper z rows: class 2
    assert foreground_centre(np.zeros((20, 16, 10))) == (10, 8, 5)  # empty: the volume's
    assert view_aspects((0.8, 0.8, 2.5)) == pytest.approx([1.0, 2.5 / 0.8, 2.5 / 0.8])


def test_the_report_draws_every_run_s_sliding_window_masks_in_three_views(tmp_path):
    job, exp = segmentation_experiment(tmp_path)
    data = prepare_data(job.data, exp.data_dir)
    runs = [(SEG_TEACHER, None, "teacher:s"), (SEGMENTER, "none", "baseline"),
            (SEGMENTER, "pixel_kd", "kd:s")]  # fmt: skip
    rows = []
    for model_name, method, role in runs:
        run_id = save_finished(exp, job, model_name, method)
        checkpoint = str(exp.run_dir(run_id) / "model.pt")
        rows.append({"trial_id": run_id, "status": "finished", "checkpoint": checkpoint,
                     "task": "segmentation", "seed": 0, "model": model_name,
                     "roles": [role]})  # fmt: skip
    # the slices come from the whole volume's sliding-window prediction, as test scores it
    model, _ = load_model(rows[2]["checkpoint"])
    volumes = load_volumes(data.path, "test")
    whole = predict_volumes(model, volumes, data.patch, "cpu", get_task("segmentation"))[0]
    image = np.asarray(volumes[0].image, np.float32)
    centre = foreground_centre(volumes[0].mask)
    (views,) = predicted_views(rows[2]["checkpoint"], [image], [centre])
    for got, expected in zip(views, view_slices(whole, centre), strict=True):
        assert np.array_equal(got, expected)

    examples = volume_examples_figure(exp.root, pd.DataFrame(rows), ["s"])
    assert examples.heading.startswith("Test volumes: axial, coronal and sagittal")
    figure = examples.figure
    for text in ("image", "ground truth", "teacher", "baseline", ">s<", "#0 axial",
                 "#0 coronal", "#0 sagittal", f"z = {centre[2]}"):  # fmt: skip
        assert text in figure, text
