"""The report's segmentation examples: a few test images with their ground truth and the masks
of a teacher, a student's no-KD baseline and each study's KD student, side by side.

Drawn for tasks whose targets are masks (`Task.pixel_targets`). The runs are those of one seed
(the smallest every shown run has); the images are chosen by lesion size, so that a small, a
middling and a large lesion are shown, and a lesion-free image when the test split has one
(where a false alarm shows). Each model predicts on the CPU from its `model.pt`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from kdray.data import load_split, prepare_data
from kdray.results.cells import baseline_rows, has_role
from kdray.store.experiment import Experiment
from kdray.store.model_file import load_model
from kdray.tasks import get_task
from kdray.train.evaluate import to_tensor

SHOWN = 4  # test images


def example_images(masks: np.ndarray, count: int = SHOWN) -> list[int]:
    """Indices of test images: the lesions at the 20th, 50th and 80th percentile of size (as
    many as `count` allows), then the first lesion-free image, if any."""
    return example_indices((masks > 0).sum(axis=(1, 2)), count)


def example_indices(sizes, count: int = SHOWN) -> list[int]:
    """Indices of the items whose foreground `sizes` (pixels or voxels) are at the 20th, 50th
    and 80th percentile (as many as `count` allows), then the first empty one, if any."""
    area = np.asarray(sizes)
    with_lesion = np.flatnonzero(area > 0)
    ordered = with_lesion[np.argsort(area[with_lesion], kind="stable")]
    picks: list[int] = []
    if len(ordered):
        for q in np.linspace(0.2, 0.8, max(1, count - 1)):
            index = int(ordered[min(len(ordered) - 1, int(q * len(ordered)))])
            if index not in picks:
                picks.append(index)
    empty = np.flatnonzero(area == 0)
    if len(empty):
        picks.append(int(empty[0]))
    return picks[:count]


def shown_runs(done: pd.DataFrame, studies: list[str]) -> list[tuple[str, pd.Series]]:
    """(column title, run) for the teachers, the baselines and each study's KD students of
    one seed, each run once."""
    seed = done.seed.min()
    done = done[done.seed == seed]
    columns: list[tuple[str, pd.Series]] = []
    seen: set[str] = set()

    def add(title: str, rows: pd.DataFrame) -> None:
        for _, row in rows.iterrows():
            if row.trial_id not in seen:
                seen.add(row.trial_id)
                columns.append((title, row))

    for study in studies:
        add("teacher", done[has_role(done, f"teacher:{study}")])
    add("baseline", baseline_rows(done))
    for study in studies:
        add(study, done[has_role(done, f"kd:{study}")].head(1))
    return columns


@torch.no_grad()
def predicted_masks(model_file: str, images: np.ndarray) -> np.ndarray:
    model, meta = load_model(model_file)
    logits = model(to_tensor(images, meta["mean"], meta["std"], "cpu"))
    return get_task(meta.get("task")).prediction(logits).numpy()


def finished_segmenters(trials: pd.DataFrame) -> pd.DataFrame:
    """The finished runs with a model file, when the runs are segmenters (else none)."""
    done = trials[(trials.status == "finished") & trials.checkpoint.notna()]
    if done.empty or not get_task(done.task.iloc[0]).pixel_targets:
        return done.iloc[:0]
    return done


def titled_runs(done: pd.DataFrame, studies: list[str]):
    """(column title, run) of `shown_runs`, each title naming its model when the teachers or
    students are several models; and the teachers' and students' models."""
    runs = shown_runs(done, studies)
    teachers = sorted({r.model for t, r in runs if t == "teacher"})
    students = sorted({r.model for t, r in runs if t != "teacher"})
    several = len(teachers) > 1 or len(students) > 1  # then each column names its model
    titled = [(f"{title}\n{run.model}" if several else title, run) for title, run in runs]
    return titled, teachers, students


def examples_figure(experiment_dir, trials: pd.DataFrame, studies: list[str]):
    """The examples as inline SVG (`kdray.export.report.svg`) under their heading, or None
    when the runs are not 2D segmenters or none has finished (volumes:
    `kdray.export.volume_views`)."""
    from kdray.export.report import Examples, plt, svg

    done = finished_segmenters(trials)
    exp = Experiment.open(experiment_dir)
    if done.empty or exp.job().data.spatial_rank == 3:
        return None
    info = prepare_data(exp.job().data, exp.data_dir)  # the grid's decoded cache
    images, masks = load_split(info.path, "test")
    picks = example_images(np.asarray(masks))
    runs, teachers, students = titled_runs(done, studies)
    shown = np.asarray(images[picks])
    columns = [("image", None), ("ground truth", np.asarray(masks[picks]))]
    columns += [(title, predicted_masks(run.checkpoint, shown)) for title, run in runs]
    fig, axes = plt.subplots(
        len(picks), len(columns), figsize=(1.5 * len(columns), 1.5 * len(picks) + 0.4),
        squeeze=False,
    )  # fmt: skip
    classes = max(info.num_classes - 1, 1)
    for col, (title, predicted) in enumerate(columns):
        axes[0][col].set_title(title, fontsize=7)
        for row in range(len(picks)):
            ax = axes[row][col]
            ax.imshow(shown[row][..., 0] if shown.shape[-1] == 1 else shown[row], cmap="gray")
            if predicted is not None:
                overlay = np.ma.masked_equal(predicted[row].astype(float), 0)
                ax.imshow(overlay, cmap="autumn", alpha=0.55, vmin=1, vmax=classes)
            ax.set_axis_off()
    fig.suptitle(
        f"test images, ground truth and predicted masks (seed {runs[0][1].seed}); teacher "
        f"{', '.join(teachers)}, students {', '.join(students)}",
        fontsize=8,
    )
    heading = "Test images: ground truth, teacher and student masks"
    return Examples(heading, svg(fig, "examples"))
