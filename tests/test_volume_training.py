"""Training on volumes without Ray: the spatial rank in the job's checks (tasks, methods, models,
settings written for images), the seeded foreground-weighted patch sampler, and the
voxel-wise KD and CWD losses on 3D outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from kdray.data.volume_base import PatchAugment
from kdray.data.volume_cache import load_volumes
from kdray.data.volumes import prepare_volumes
from kdray.methods import METHODS, Outputs, Shapes
from kdray.spec.base import JobError
from kdray.spec.checks import model_problems
from kdray.spec.job import Job
from kdray.tasks import UNLABELLED, get_task
from kdray.train.patches import VolumeBatches, draw_patch

TEACHER, STUDENT = "basicunet3d", "basicunet3d-f4.4.8.16.32.4"


def volume_job(**changes) -> dict:
    job = {
        "name": "v",
        "data": {"kind": "synthetic_volumes"},
        "studies": {"s": {"teachers": [TEACHER], "students": [STUDENT],
                          "method": {"name": "pixel_kd"}}},
    }  # fmt: skip
    for key, value in changes.items():
        job[key] = value
    return job


def problems_of(raw: dict) -> list[str]:
    try:
        return model_problems(Job.model_validate(raw))
    except JobError as exc:
        return exc.problems


@pytest.mark.parametrize("method", ["pixel_kd", "cwd", "feature_l1", "at"])
def test_a_volume_job_with_3d_segmenters_and_a_3d_method_is_valid(method):
    raw = volume_job()
    raw["studies"]["s"]["method"] = {"name": method}
    assert problems_of(raw) == []


def test_mean_teacher_on_volumes_is_valid_without_a_teacher_run():
    raw = volume_job()
    raw["studies"]["s"] = {"students": [STUDENT], "method": {"name": "mean_teacher"}}
    assert problems_of(raw) == []


def test_kdray_validate_accepts_the_3d_feature_methods_and_counts_volumes(tmp_path):
    from tests.test_bad_inputs import cli

    raw = volume_job(storage=str(tmp_path / "runs"), seeds=[0])
    raw["data"] = {"kind": "synthetic_volumes", "shape": [32, 32, 16], "patch": [32, 32, 16],
                   "train_size": 2, "valid_size": 1, "test_size": 1}  # fmt: skip
    pair = {"teachers": [TEACHER], "students": [STUDENT]}
    raw["studies"] = {
        "l1": {**pair, "method": {"name": "feature_l1"}},
        "at": {**pair, "method": {"name": "at"}},
        "mt": {"students": [STUDENT], "method": {"name": "mean_teacher"}},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(raw))
    refused = cli("validate", tmp_path / "job.yaml", env={"COLUMNS": "200"})
    assert refused.exit_code == 2
    assert "train.batch_size: 16 is larger than the training split (2 volumes)" in refused.output
    raw["train"] = {"batch_size": 2}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(raw))
    result = cli("validate", tmp_path / "job.yaml", env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "train 2, valid 1, test 1 volumes" in result.output
    assert "decoded every volume into" in result.output and "image" not in result.output


def test_the_training_masks_line_counts_volumes_and_voxels():
    masks = [np.zeros((4, 4, 2), np.int8), np.ones((2, 4, 4), np.int8)]  # shapes of their own
    line = get_task("segmentation").count_line(masks, ["background", "organ"])
    assert line == "volumes with: organ 1 (of 2); voxels: background 50.0%, organ 50.0%"


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"method": {"name": "kd"}}, "studies.s.method: kd is defined for single-label or "
         "multi-label data, and this data is segmentation; use one of ['at', 'cwd', "
         "'feature_l1', 'mean_teacher', 'pixel_kd']"),
        ({"students": ["unet-resnet18"]}, "studies.s.students: 'unet-resnet18': unknown 3D "
         "network 'unet'"),
        ({"students": ["densenet3d"]}, "studies.s.students: 'densenet3d' is a 3D "
         "classification network; segmentation takes one of"),
    ],
)  # fmt: skip
def test_a_method_or_model_of_another_rank_is_one_line_naming_the_study(change, says):
    raw = volume_job()
    raw["studies"]["s"].update(change)
    problems = problems_of(raw)
    assert len(problems) == 1 and problems[0].startswith(says)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"train": {"channels_last": True}}, "train.channels_last: 2D layouts only"),
        ({"train": {"augment": [{"name": "HorizontalFlip"}]}}, "train.augment: a list of "),
        ({"data": {"kind": "synthetic_volumes", "patch": [32, 32, 24]}},
         "studies.s.teachers: 'basicunet3d' needs each side of data.patch [32, 32, 24] "
         "divisible by 16"),
        ({"data": {"kind": "synthetic_volumes", "patch": [16, 16, 16]}},
         "studies.s.teachers: 'basicunet3d' down-samples data.patch [16, 16, 16] to one voxel"),
        ({"train": {"augment": False}, "data": {"kind": "synthetic_volumes",
          "patch_augment": {}}}, "data.patch_augment: augments after train.augment's flips, "
         "which are off; set train.augment: true or drop data.patch_augment"),
    ],
)  # fmt: skip
def test_settings_volumes_cannot_take_are_one_line_each(change, says):
    problems = problems_of(volume_job(**change))  # a patch no model takes: one line per model
    assert problems and problems[0].startswith(says), problems
    assert len(problems) == (2 if "data.patch [" in says else 1)
    assert all("\n" not in line for line in problems)


# --- patches ------------------------------------------------------------------------------------


def organ_volume(shape=(40, 40, 20), corner=(30, 30, 14), side=4):
    """A volume with one small cube of class 1 near a corner (the rest background)."""
    image = np.random.default_rng(0).normal(size=shape).astype(np.float16)
    mask = np.zeros(shape, np.int8)
    mask[tuple(slice(c, c + side) for c in corner)] = 1
    return image, mask


def test_a_patch_is_the_volume_cut_at_its_corner_and_flipped_with_its_mask():
    image, mask = organ_volume()
    x, y = draw_patch(image, mask, (16, 16, 8), 1.0, True, np.random.default_rng(3))
    assert x.shape == (16, 16, 8) and x.dtype == np.float32 and y.dtype == np.int64
    assert (y == 1).sum() == 4**3  # the whole cube, wherever the flips moved it
    assert np.allclose(x[y == 1], image.astype(np.float32)[mask == 1].mean(), atol=4)


def test_foreground_weighting_draws_patches_on_a_small_structure():
    image, mask = organ_volume()
    hits = {}
    for foreground in (0.0, 1.0):
        rngs = (np.random.default_rng(i) for i in range(200))
        hits[foreground] = np.mean(
            [(draw_patch(image, mask, (8, 8, 8), foreground, False, r)[1] == 1).any()
             for r in rngs]
        )  # fmt: skip
    assert hits[1.0] == 1.0  # centred on the cube: it is always in the patch
    assert hits[0.0] < 0.2  # anywhere: a 4^3 cube in 40x40x20 is rarely in an 8^3 patch


def test_a_volume_smaller_than_the_patch_is_padded_with_unknown_voxels():
    image, mask = organ_volume(shape=(10, 20, 6), corner=(2, 2, 1))
    x, y = draw_patch(image, mask, (16, 16, 8), 0.5, False, np.random.default_rng(1))
    assert x.shape == y.shape == (16, 16, 8)
    assert (y[10:] == UNLABELLED).all() and (y[:, :, 6:] == UNLABELLED).all()
    assert (x[10:] == 0).all() and (y[:10, :, :6] != UNLABELLED).all()


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from kdray.data.phantoms import Config

    cfg = Config(train_size=6, valid_size=1, test_size=1, shape=(24, 24, 16))
    info = prepare_volumes(cfg, tmp_path_factory.mktemp("vol"))
    return load_volumes(info.path, "train")


def batches(volumes, seed=0, rank=0, world_size=1):
    return VolumeBatches(volumes, (16, 16, 16), 0.5, True, 2, seed, rank, world_size)


def test_patches_repeat_by_seed_and_epoch_whenever_they_are_drawn(phantoms):
    def drawn(b, epoch):
        return [(x.numpy(), y.numpy(), i.numpy()) for x, y, i in b.epoch(epoch)]

    first, again = drawn(batches(phantoms), 1), drawn(batches(phantoms), 1)
    assert len(first) == 3 and first[0][0].shape == (2, 1, 16, 16, 16)
    for (x, y, i), (x2, y2, i2) in zip(first, again, strict=True):
        assert np.array_equal(x, x2) and np.array_equal(y, y2) and np.array_equal(i, i2)
    other_epoch, other_seed = drawn(batches(phantoms), 2), drawn(batches(phantoms, seed=1), 1)
    assert not np.array_equal(first[0][0], other_epoch[0][0])
    assert not np.array_equal(first[0][0], other_seed[0][0])
    # a resumed run draws epoch 1 without having drawn epoch 0: the same patches
    resumed = batches(phantoms)
    assert np.array_equal(resumed.sample(1, int(first[0][2][0]))[0], first[0][0][0, 0])


def test_ranks_share_an_epoch_without_overlap(phantoms):
    ranks = [batches(phantoms, rank=r, world_size=2) for r in range(2)]
    orders = [b.order(0) for b in ranks]
    assert len(orders[0]) == len(orders[1]) == 3
    assert sorted(np.concatenate(orders).tolist()) == list(range(6))


def augmented(volumes, augment, seed=0):
    return VolumeBatches(volumes, (16, 16, 16), 0.5, True, 2, seed, augment=augment)


def test_patch_augmentation_repeats_for_a_seed_whatever_was_drawn_before(phantoms):
    every = PatchAugment(rotate=30, scale=0.2, intensity=0.2, noise=0.1, p=1.0)
    first = augmented(phantoms, every)
    x, y = first.sample(3, 2)
    for index in (0, 1, 4):  # other samples move MONAI's state on in between
        first.sample(3, index)
    again = augmented(phantoms, every).sample(3, 2)  # a resumed run's fresh transforms
    assert np.array_equal(x, again[0]) and np.array_equal(y, again[1])
    assert np.array_equal(first.sample(3, 2)[0], x)
    plain_x, plain_y = augmented(phantoms, None).sample(3, 2)
    assert not np.allclose(x, plain_x, atol=0.05)  # rotated, scaled and noisy
    assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape == y.shape == (16, 16, 16)
    # corners rotated in from outside the patch have no class; the rest keep the patch's
    assert set(np.unique(y)) <= {UNLABELLED, *np.unique(plain_y)} and (y == UNLABELLED).any()
    assert not np.array_equal(augmented(phantoms, every).sample(4, 2)[0], x)  # next epoch
    assert not np.array_equal(augmented(phantoms, every, seed=1).sample(3, 2)[0], x)


def test_patch_augmentation_that_draws_nothing_leaves_the_patch_as_it_was(phantoms):
    """Its seed is drawn after the patch and flips: they stay what they were without it."""
    never = augmented(phantoms, PatchAugment(p=0.0))
    for epoch, index in ((0, 0), (2, 5)):
        x, y = never.sample(epoch, index)
        plain_x, plain_y = augmented(phantoms, None).sample(epoch, index)
        assert np.array_equal(x, plain_x) and np.array_equal(y, plain_y)


# --- methods on 3D outputs -----------------------------------------------------------------------


def method(name: str, classes: int = 3):
    cls = METHODS[name]
    return cls(cls.Params(), Shapes(classes, 1, task="segmentation"))


@pytest.mark.parametrize("name", ["pixel_kd", "cwd"])
def test_3d_methods_equal_their_2d_loss_on_the_same_voxels_laid_flat(name):
    """A volume (N, C, D, H, W) read as images (N, C, D * H, W): the same voxels, the same
    loss (pixel KD averages over voxels, CWD's spatial softmax runs over all of them)."""
    g = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 4, 6, 5, generator=g, requires_grad=True)
    teacher = torch.randn(2, 3, 4, 6, 5, generator=g)
    targets = torch.randint(0, 3, (2, 4, 6, 5), generator=g)
    m = method(name)
    volume = m(Outputs(student), [Outputs(teacher)], targets, 0.0)
    flat = m(Outputs(student.flatten(2, 3)), [Outputs(teacher.flatten(2, 3))],
             targets.flatten(1, 2), 0.0)  # fmt: skip
    term = "pixel_kd" if name == "pixel_kd" else "cwd"
    assert volume[term].item() == pytest.approx(flat[term].item(), rel=1e-5)
    assert volume[term].item() > 0
    volume["loss"].backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    same = m(Outputs(teacher), [Outputs(teacher)], targets, 0.0)[term]
    assert same.item() == pytest.approx(0.0, abs=1e-5)  # nothing to learn from itself
