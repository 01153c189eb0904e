"""Training batches of volumes: one patch per volume per epoch, seeded per sample.

Volumes exceed what a 3D network trains on at once, so a run trains on patches (`data.patch`,
voxels per axis). Each epoch every training volume gives one patch, in a permutation drawn from
(run seed, epoch); the patch's centre is a foreground voxel (any class > 0) with probability
`data.foreground` (so small structures are seen at all; nnU-Net samples a third of its patches
this way), else any voxel; with `train.augment` on, the patch is flipped along each axis with
probability 1/2, and with `data.patch_augment` also rotated, zoomed and changed in intensity
(`kdray.train.volume_augment`, MONAI's transforms). Every draw of a sample comes from its own
generator, seeded by (run seed, epoch, volume index) like a 2D sample's augmentation
(`kdray.train.batches.sample_seed`), so a run resumed from a checkpoint sees the patches it
would have seen, and a teacher replays its students' patches exactly (the soft-label cache).
A volume smaller than the patch along an axis is padded: intensity 0 (the volume's mean after
normalisation, what sliding-window inference pads with) and mask `UNLABELLED` (no loss there).
A classification volume (one class, no mask) is one sample whole: `data.patch` is then the
classifier's input, each volume centre-cropped or padded to it (`whole_volume`), flipped per
axis like a patch.

Written here rather than with MONAI's `RandCropByPosNegLabeld`: its draws come from a
`RandomState` shared by every instance of the class unless reseeded (issue 32's notes), it
refuses volumes smaller than the patch, and it lists a volume's foreground on every call.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from kdray.data.volume_base import PatchAugment
from kdray.data.volume_cache import CachedVolumes
from kdray.tasks import UNLABELLED
from kdray.train.batches import prefetched, sample_seed
from kdray.train.volume_augment import augment, build_pipeline

MAX_FOREGROUND_CENTRES = 1 << 16  # foreground voxels kept per volume to draw centres from


def patch_start(shape: tuple[int, ...], patch: tuple[int, ...], centre) -> tuple[int, ...]:
    """The patch's first voxel per axis for a patch centred on `centre`, moved inside the
    volume where it fits (0 where the volume is smaller than the patch: it is padded)."""
    return tuple(
        int(min(max(c - p // 2, 0), max(n - p, 0)))
        for n, p, c in zip(shape, patch, centre, strict=True)
    )


def crop(array: np.ndarray, start, patch, fill) -> np.ndarray:
    """`array[start : start + patch]` per axis, padded with `fill` at the end of each axis
    where the volume is smaller than the patch."""
    window = tuple(slice(s, s + p) for s, p in zip(start, patch, strict=True))
    part = np.asarray(array[window])
    missing = [(0, p - n) for p, n in zip(patch, part.shape, strict=True)]
    if any(after for _, after in missing):
        part = np.pad(part, missing, constant_values=fill)
    return part


def foreground_voxels(mask: np.ndarray) -> np.ndarray:
    """Flat indices of the mask's foreground voxels (every k-th of them above
    `MAX_FOREGROUND_CENTRES`: a large organ keeps a regular sample of itself)."""
    found = np.flatnonzero(np.asarray(mask) > 0)
    step = -(-len(found) // MAX_FOREGROUND_CENTRES)
    return found[::step] if step > 1 else found


def draw_patch(
    image: np.ndarray,
    mask: np.ndarray,
    patch: tuple[int, ...],
    foreground: float,
    flips: bool,
    rng: np.random.Generator,
    centres: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One training patch (float32 image, int64 mask) of a volume, drawn from `rng`:
    centred on one of `centres` (flat foreground indices; default: the mask's) with
    probability `foreground`, else on any voxel; flipped per axis when `flips`."""
    centres = foreground_voxels(mask) if centres is None else centres
    on_foreground = rng.random() < foreground
    if on_foreground and len(centres):
        centre = np.unravel_index(centres[rng.integers(len(centres))], image.shape)
    else:
        centre = tuple(int(rng.integers(n)) for n in image.shape)
    start = patch_start(image.shape, patch, centre)
    x = crop(image, start, patch, 0.0).astype(np.float32)
    y = crop(mask, start, patch, UNLABELLED).astype(np.int64)
    if flips:
        axes = tuple(a for a, flip in enumerate(rng.random(len(patch)) < 0.5) if flip)
        if axes:
            x, y = np.flip(x, axes), np.flip(y, axes)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def whole_volume(
    image: np.ndarray, patch: tuple[int, ...], flips: bool, rng: np.random.Generator | None = None
) -> np.ndarray:
    """A classifier's input (float32): the volume centre-cropped to `patch` where it is larger,
    padded with 0 where it is smaller (the same at training and evaluation), then flipped per
    axis drawn from `rng` when `flips`."""
    start = tuple(max((n - p) // 2, 0) for n, p in zip(image.shape, patch, strict=True))
    x = crop(image, start, patch, 0.0).astype(np.float32)
    if flips and rng is not None:
        axes = tuple(a for a, flip in enumerate(rng.random(len(patch)) < 0.5) if flip)
        if axes:
            x = np.flip(x, axes)
    return np.ascontiguousarray(x)


@dataclass
class VolumeBatches:
    """A rank's patches of a run, epoch by epoch (the `TrainBatches` of volumes): each epoch
    a seeded permutation of the volumes, this rank's share of it, cut into batches of
    (N, 1, D, H, W) float32 patches, (N, D, H, W) masks and the volumes' indices."""

    volumes: CachedVolumes
    patch: tuple[int, ...]
    foreground: float
    flips: bool
    batch_size: int
    seed: int  # the run's seed (each rank draws from seed * 1000 + rank, as 2D batches)
    rank: int = 0
    world_size: int = 1
    prefetch: int = 0
    augment: PatchAugment | None = None  # affine and intensity changes after the flips
    _centres: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    _pipeline: object = field(default=None, repr=False)

    @property
    def run_seed(self) -> int:
        return self.seed * 1000 + self.rank

    @property
    def samples(self) -> int:
        """Patches this rank draws per epoch (its positions in the soft-label cache)."""
        return len(self.volumes) // self.world_size

    @property
    def drop_last(self) -> bool:
        return self.samples > self.batch_size

    def __len__(self) -> int:
        full, rest = divmod(self.samples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def order(self, epoch: int) -> np.ndarray:
        """This rank's volumes in `epoch`, in drawing order (every rank the same count)."""
        permutation = np.random.default_rng([self.seed, epoch]).permutation(len(self.volumes))
        return permutation[self.rank :: self.world_size][: self.samples]

    def sample(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Volume `index`'s patch (and mask, or class) in `epoch`: the same whenever and
        wherever it is drawn."""
        volume = self.volumes[index]
        rng = np.random.default_rng(sample_seed(self.run_seed, epoch, index))
        if volume.label is not None:  # classification: the whole volume is the sample
            x = whole_volume(volume.image, self.patch, self.flips, rng)
            return self._augmented(x, None, rng)[0], np.asarray(volume.label, dtype=np.int64)
        if index not in self._centres:
            self._centres[index] = foreground_voxels(volume.mask)
        x, y = draw_patch(
            volume.image, volume.mask, self.patch, self.foreground, self.flips, rng,
            self._centres[index],
        )  # fmt: skip
        return self._augmented(x, y, rng)

    def _augmented(self, x, y, rng: np.random.Generator):
        """`x` and `y` changed by `data.patch_augment` (with the flips on), seeded from the
        sample's `rng` after its patch and flips drew theirs (so they are as without it)."""
        if self.augment is None or not self.flips:
            return x, y
        if self._pipeline is None:
            self._pipeline = build_pipeline(self.augment, with_mask=y is not None)
        return augment(self._pipeline, x, y, int(rng.integers(2**31)))

    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = self.order(epoch)
        for start in range(0, len(order), self.batch_size):
            indices = order[start : start + self.batch_size]
            if len(indices) < self.batch_size and self.drop_last:
                return
            pairs = [self.sample(epoch, int(i)) for i in indices]
            x = torch.from_numpy(np.stack([p[0] for p in pairs]))[:, None]
            y = torch.from_numpy(np.stack([p[1] for p in pairs]))
            yield x, y, torch.from_numpy(indices.astype(np.int64))

    def epoch(self, epoch: int) -> Iterator:
        """The batches of `epoch` (0-based), `prefetch` batches ahead in a thread."""
        return prefetched(self._batches(epoch), self.prefetch)


def volume_batches(
    volumes: CachedVolumes, job, seed: int, rank: int = 0, world_size: int = 1
) -> VolumeBatches:
    """Rank `rank`'s patches of a run of `job` (its data's patch and foreground share, its
    augmentation switch, batch size and prefetch)."""
    return VolumeBatches(
        volumes, tuple(job.data.patch), job.data.foreground, bool(job.train.augment),
        job.train.batch_size, seed, rank, world_size, job.train.prefetch_batches,
        job.data.patch_augment,
    )  # fmt: skip
