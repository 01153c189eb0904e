"""Semantic segmentation: a class per pixel (lesion masks: BUSI, Kvasir-SEG, ISIC, MedSegBench).

A target is a mask, an (H, W) map of class indices at the image's size, 0 the background (a
binary lesion mask: classes background and lesion); -1 (`UNLABELLED`) marks pixels nobody may
read: every pixel of a label budget's pool image, and pixels an augmentation brought in from
outside the image (`kdray.train.batches`). Masks travel with their images: the cache resizes
them with nearest neighbour, augmentations move them with the image.

Models: smp architectures on timm encoders by name (`kdray.tasks.segmenters`), one output
channel per class. Predictions are per-pixel softmax probabilities, and a teacher hands its
student a categorical distribution per pixel (outcomes along dim 1, so Hinton-style KL and
ensembles work unchanged: `kl_to_student`'s `batchmean` is then the mean over pixels).

Loss: cross-entropy plus soft Dice (smp's `DiceLoss`, foreground classes, pooled over the batch;
a class absent from a batch's masks adds nothing), nnU-Net's default combination: cross-entropy
alone under-segments small lesions (a lesion is a few per cent of the pixels), Dice alone is
unstable on batches with little foreground; the sum trains both.

Metrics (`kdray.tasks.segmentation_metrics`): Dice (primary), IoU and HD95 in pixels, each the
mean over images and then over foreground classes; images whose ground truth lacks a class are
left out of that class's scores and counted in `empty_fp` (docs/tasks.md's empty-mask policy).

Volumes (spatial rank 3) are the same task: a MONAI segmenter by name
(`kdray.tasks.volume_models`), a mask per volume, the same loss (smp's Dice loss flattens every
spatial axis), and the same metrics per volume with HD95 in mm at each volume's spacing
(`kdray.tasks.volume_metrics`: `metrics(..., spacings=...)`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from kdray.tasks.base import UNLABELLED, Task, register
from kdray.tasks.segmentation_metrics import mean_dice, segmentation_metrics, segmentation_report
from kdray.tasks.segmenters import create_segmenter, name_problem
from kdray.tasks.volume_metrics import volume_segmentation_metrics, volume_segmentation_report
from kdray.tasks.volume_models import create_volume_model, volume_model_problem


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice over the foreground classes (smp's multiclass `DiceLoss`, unknown pixels
    ignored), pooled over the batch; the mean over classes, a class absent from the batch 0."""
    from segmentation_models_pytorch.losses import DiceLoss

    classes = list(range(1, logits.shape[1]))
    loss = DiceLoss("multiclass", classes=classes, from_logits=True, ignore_index=UNLABELLED)
    return loss(logits.float(), targets)


@register
class Segmentation(Task):
    name = "segmentation"
    primary = "dice"
    primary_title = "Dice"
    outputs = "classes"
    loss_name = "ce_dice"
    pixel_targets = True
    ranks = (2, 3)

    def create_model(self, name, num_classes, channels, weights=None, rank=2, image_size=None):
        if rank == 3:
            return create_volume_model(name, num_classes, channels)
        return create_segmenter(name, num_classes, channels, weights)

    def model_problem(self, name, image_size):
        if isinstance(image_size, tuple):
            return volume_model_problem(name, image_size, "segmentation")
        return name_problem(name, image_size)

    def supervised_loss(self, logits, targets, weight=None):
        targets = targets.long()
        labelled = (targets != UNLABELLED).any()  # none: 0 (CE would be 0/0), no host sync
        ce = F.cross_entropy(logits.float(), targets, weight=weight, ignore_index=UNLABELLED)
        loss = ce + dice_loss(logits, targets)
        return torch.where(labelled, loss, torch.zeros_like(loss))

    def probabilities(self, logits):
        return torch.softmax(logits.float(), dim=1)

    def log_probs(self, logits, temperature=1.0):
        return F.log_softmax(logits.float() / temperature, dim=1)

    def prediction(self, logits):
        """The predicted mask (N, H, W): what evaluation keeps (not N x C x H x W floats)."""
        return logits.argmax(1).to(torch.uint8)

    def decisions(self, probs):
        return probs.argmax(1)

    def item_weights(self, weight, targets, teacher_log_probs):
        classes = torch.where(targets != UNLABELLED, targets, teacher_log_probs.argmax(1))
        return weight[classes.long()]

    def correct(self, logits, targets):
        labelled = targets != UNLABELLED
        return ((logits.argmax(1) == targets) & labelled).sum(), labelled.sum()

    def class_counts(self, targets, num_classes):
        return tuple(int(c) for c in _pixel_counts(targets, num_classes))

    def count_line(self, targets, names, samples="images"):
        """`targets`: masks (N, H, W), or a list of masks of their own shapes (volumes, which
        they show: `samples` is not needed)."""
        pixels = _pixel_counts(targets, len(names))
        share = ", ".join(
            f"{n} {100 * p / max(pixels.sum(), 1):.1f}%" for n, p in zip(names, pixels, strict=True)
        )
        images = ", ".join(
            f"{n} {sum(bool((np.asarray(t) == c).any()) for t in targets)}"
            for c, n in enumerate(names)
            if c
        )
        volumes = any(np.ndim(t) == 3 for t in targets)
        samples, elements = ("volumes", "voxels") if volumes else ("images", "pixels")
        return f"{samples} with: {images} (of {len(targets)}); {elements}: {share}"

    def train_problems(self, targets, names, samples="images"):
        if _pixel_counts(targets, len(names))[1:].any():
            return []
        volumes = any(np.ndim(t) == 3 for t in targets)
        where = "data.spacing or data.size (resampling can erase small structures)"
        return [
            f"data: no train {'volume' if volumes else 'image'} has a "
            f"{'voxel' if volumes else 'pixel'} of {', '.join(names[1:])}: nothing to segment; "
            f"check the masks{', and ' + where if volumes else ''}"
        ]

    def no_skill(self, targets, names):
        return 0.0, f"predicting {names[0]} everywhere"

    def output_shape(self, num_classes, image_size):
        if isinstance(image_size, tuple):
            return (num_classes, *image_size)
        return (num_classes, image_size, image_size)

    def metrics(self, probs, targets, num_classes=None, spacings=None):
        """`spacings` (one per volume, mm per axis): `probs` and `targets` are lists of the
        masks of volumes, scored at their spacing."""
        if spacings is not None:
            return volume_segmentation_metrics(probs, targets, spacings, num_classes)
        return segmentation_metrics(probs, targets, num_classes or _classes(probs, targets))

    def report(self, probs, targets, names, spacings=None):
        if spacings is not None:
            return volume_segmentation_report(probs, targets, spacings, names)
        return segmentation_report(probs, targets, names)

    def primary_score(self, probs, targets, num_classes=None, spacings=None):
        if spacings is not None:
            return float(self.metrics(probs, targets, num_classes, spacings)["dice"] or 0.0)
        return mean_dice(probs, targets, num_classes or _classes(probs, targets))


def _pixel_counts(targets, num_classes: int) -> np.ndarray:
    """Known pixels (voxels) per class over every mask of `targets`."""
    counts = np.zeros(num_classes, np.int64)
    for mask in targets:
        mask = np.asarray(mask)
        counts += np.bincount(mask[mask != UNLABELLED].ravel(), minlength=num_classes)[:num_classes]
    return counts


def _classes(pred: np.ndarray, truth: np.ndarray) -> int:
    """The number of classes when the caller does not say: the largest index seen, plus one."""
    return int(max(np.max(pred, initial=1), np.max(truth, initial=1))) + 1
