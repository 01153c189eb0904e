"""The report's segmentation examples for volumes: axial, coronal and sagittal slices of a few
test volumes, with the ground truth and the masks of a teacher, a student's no-KD baseline and
each study's KD student side by side (the 2D figure's columns: `kdray.export.masks`).

The volumes are chosen as the 2D images are, by foreground size (`example_indices`); each is
cut through the centre of its ground truth's foreground, the same three slices for every
column. Each model predicts the whole volume on the CPU from its `model.pt` by sliding window
over its training patch, as validation and test score it (`kdray.tasks.sliding_window`); only
the three slices of each prediction are kept. Cached volumes are in RAS+ order (axis 0 left to
right, 1 posterior to anterior, 2 inferior to superior), so an axial slice fixes axis 2, a
coronal one axis 1 and a sagittal one axis 0; each is drawn with its voxels' true aspect.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from kdray.data import prepare_data
from kdray.data.volume_cache import load_volumes
from kdray.export.masks import example_indices, finished_segmenters, titled_runs
from kdray.store.experiment import Experiment
from kdray.store.model_file import load_model
from kdray.tasks import get_task
from kdray.tasks.sliding_window import sliding_window_logits

VIEWS = (("axial", 2), ("coronal", 1), ("sagittal", 0))  # the RAS+ axis each view fixes
SHOWN_VOLUMES = 4  # at most: three by foreground size, and an empty one when there is one


def foreground_centre(mask: np.ndarray) -> tuple[int, ...]:
    """The voxel nearest the centroid of the mask's foreground (any class > 0); the volume's
    centre when it has none."""
    points = np.argwhere(np.asarray(mask) > 0)
    if not len(points):
        return tuple(n // 2 for n in mask.shape)
    return tuple(int(round(c)) for c in points.mean(axis=0))


def view_slices(volume: np.ndarray, centre) -> list[np.ndarray]:
    """The axial, coronal and sagittal slices of `volume` through `centre`, each transposed
    so that its later axis runs up the rows (drawn with `origin="lower"`)."""
    return [np.asarray(np.take(volume, centre[axis], axis=axis)).T for _, axis in VIEWS]


def view_aspects(spacing) -> list[float]:
    """Each view's pixel height over width in mm (imshow's `aspect`)."""
    aspects = []
    for _, axis in VIEWS:
        across, up = (a for a in range(3) if a != axis)
        aspects.append(spacing[up] / spacing[across])
    return aspects


@torch.no_grad()
def predicted_views(model_file: str, images: list[np.ndarray], centres) -> list[list]:
    """Each volume's predicted mask by sliding window, as its three view slices."""
    model, meta = load_model(model_file)
    task = get_task(meta.get("task"))
    views = []
    for image, centre in zip(images, centres, strict=True):
        x = torch.from_numpy(image)[None, None]
        mask = task.prediction(sliding_window_logits(model, x, tuple(meta["patch"])))[0]
        views.append(view_slices(mask.numpy(), centre))
    return views


@dataclass
class ShownVolume:
    """A test volume of the figure: its three view slices, and each column's mask slices
    (None for the image column)."""

    index: int
    spacing: tuple[float, ...]
    centre: tuple[int, ...]
    image: list[np.ndarray]
    masks: list[list[np.ndarray] | None]


def volume_examples_figure(experiment_dir, trials: pd.DataFrame, studies: list[str]):
    """The three views as inline SVG under their heading (`kdray.export.report.Examples`),
    or None when the runs are not 3D segmenters or none has finished."""
    from kdray.export.report import Examples, svg

    done = finished_segmenters(trials)
    exp = Experiment.open(experiment_dir)
    if done.empty or exp.job().data.spatial_rank != 3:
        return None
    info = prepare_data(exp.job().data, exp.data_dir)  # the grid's cache
    volumes = load_volumes(info.path, "test")
    sizes = [int((np.asarray(volumes[i].mask) > 0).sum()) for i in range(len(volumes))]
    images, shown = [], []
    for i in example_indices(sizes, SHOWN_VOLUMES):
        image, mask = np.asarray(volumes[i].image, np.float32), np.asarray(volumes[i].mask)
        centre = foreground_centre(mask)
        spacing = tuple(volumes.entries[i]["spacing"])
        views = view_slices(image, centre)
        shown.append(ShownVolume(i, spacing, centre, views, [None, view_slices(mask, centre)]))
        images.append(image)
    runs, teachers, students = titled_runs(done, studies)
    for _, run in runs:
        predicted = predicted_views(run.checkpoint, images, [v.centre for v in shown])
        for volume, views in zip(shown, predicted, strict=True):
            volume.masks.append(views)
    titles = ["image", "ground truth"] + [title for title, _ in runs]
    fig = draw_views(shown, titles, max(info.num_classes - 1, 1))
    fig.suptitle(
        f"test volumes through their foreground's centre: ground truth and predicted masks "
        f"(seed {runs[0][1].seed}); teacher {', '.join(teachers)}, students "
        f"{', '.join(students)}",
        fontsize=8,
    )
    heading = "Test volumes: axial, coronal and sagittal slices of the truth and the masks"
    return Examples(heading, svg(fig, "volume-examples"))


def draw_views(shown: list[ShownVolume], titles: list[str], classes: int):
    """One row per (volume, view), one column per title: the volume's slice in grey (one
    intensity range per volume), the column's mask over it."""
    from kdray.export.report import plt

    rows = len(shown) * len(VIEWS)
    fig, axes = plt.subplots(
        rows, len(titles), figsize=(1.4 * len(titles), 1.4 * rows + 0.4), squeeze=False
    )
    for col, title in enumerate(titles):
        axes[0][col].set_title(title, fontsize=7)
    for v, volume in enumerate(shown):
        low, high = np.percentile(np.concatenate([s.ravel() for s in volume.image]), (1, 99))
        aspects = view_aspects(volume.spacing)
        for k, (view, axis) in enumerate(VIEWS):
            row = axes[v * len(VIEWS) + k]
            label = f"#{volume.index} {view}\n{'xyz'[axis]} = {volume.centre[axis]}"
            row[0].set_ylabel(label, fontsize=6)
            for ax, masks in zip(row, volume.masks, strict=True):
                drawn = {"origin": "lower", "aspect": aspects[k]}
                ax.imshow(volume.image[k], cmap="gray", vmin=low, vmax=high, **drawn)
                if masks is not None:
                    overlay = np.ma.masked_equal(masks[k].astype(float), 0)
                    ax.imshow(overlay, cmap="autumn", alpha=0.55, vmin=1, vmax=classes, **drawn)
                ax.set_xticks([])
                ax.set_yticks([])
    return fig
