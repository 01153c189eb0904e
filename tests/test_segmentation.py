"""The segmentation task without Ray: Dice, IoU and HD95 against hand-made masks, the loss and
the segmentation KD methods against naive formulas, stage pairing and gradients, masks moving
with their images, segmenter names and sizes (the ONNX check: tests/test_segmentation_grid.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdray.data.augment import build_train_augmentation
from kdray.methods import METHODS, Outputs, Shapes
from kdray.methods.features import aligned_pairs
from kdray.spec.job import JobError
from kdray.spec.load import parse_job
from kdray.tasks import UNLABELLED, get_task
from kdray.tasks.models import count_params
from kdray.tasks.segmentation_metrics import hd95, segmentation_metrics, segmentation_report
from kdray.tasks.segmenters import create_segmenter
from kdray.train.batches import TrainSet
from kdray.train.distiller import network_outputs

SEG = get_task("segmentation")
TEACHER, STUDENT = "unet-resnet34", "unet-lcnet_035-d16.16.8.8.8"


def masks(*drawn: list[tuple[int, int]], size: int = 16) -> np.ndarray:
    """One (size, size) binary mask per list of lit pixels."""
    out = np.zeros((len(drawn), size, size), np.int8)
    for i, pixels in enumerate(drawn):
        for y, x in pixels:
            out[i, y, x] = 1
    return out


def square(y: int, x: int, side: int) -> list[tuple[int, int]]:
    return [(y + a, x + b) for a in range(side) for b in range(side)]


# --- metrics against hand-made masks ----------------------------------------------------------


def test_perfect_and_disjoint_predictions():
    truth = masks(square(2, 2, 4), square(8, 8, 3))
    perfect = segmentation_metrics(truth, truth, 2)
    assert (perfect["dice"], perfect["iou"], perfect["hd95"]) == (1.0, 1.0, 0.0)
    disjoint = masks(square(10, 10, 4), square(0, 0, 3))
    scores = segmentation_metrics(disjoint, truth, 2)
    assert (scores["dice"], scores["iou"]) == (0.0, 0.0)
    # image 0: squares [2,5]^2 and [10,13]^2, boundary to boundary 5*sqrt(2) at the far
    # corners, 8*sqrt(2) corner to corner: MONAI's HD95 of the two outlines, worked by hand
    assert scores["hd95"] > 5


def test_one_pixel_lesions_hit_and_missed_by_one_pixel():
    truth = masks([(5, 5)], [(5, 5)])
    pred = masks([(5, 5)], [(5, 6)])
    scores = segmentation_metrics(pred, truth, 2)
    assert scores["dice"] == pytest.approx((1.0 + 0.0) / 2)  # mean over images, not pooled
    assert scores["hd95"] == pytest.approx((0.0 + 1.0) / 2)  # one pixel off: distance 1
    assert hd95(np.pad([[True]], 3), np.pad([[True]], ((3, 3), (6, 0)))) == pytest.approx(3.0)


def test_empty_masks_follow_the_stated_policy():
    truth = masks(square(2, 2, 4), [], [])
    pred = masks(square(2, 2, 4), [], [(0, 0)])  # image 2: a false alarm on an empty image
    scores = segmentation_metrics(pred, truth, 2)
    assert scores["dice"] == 1.0  # empty ground truths are left out of Dice, IoU, HD95
    assert scores["empty_fp"] == 0.5  # one of the two lesion-free images has an alarm
    nothing = segmentation_metrics(masks([], []), masks([], []), 2)
    assert nothing["dice"] is None and nothing["hd95"] is None and nothing["empty_fp"] == 0.0
    missed = segmentation_metrics(masks([]), masks([(3, 3)]), 2)  # nothing predicted
    assert missed["dice"] == 0.0 and missed["hd95"] == pytest.approx(math.hypot(16, 16))


def test_a_size_weighted_image_is_still_one_image():
    big, tiny = square(0, 0, 10), [(15, 15)]
    truth = masks(big, tiny)
    pred = masks(big, [])
    assert segmentation_metrics(pred, truth, 2)["dice"] == pytest.approx(0.5)  # not 100/101


def test_multi_class_means_per_class_and_an_absent_class_is_left_out():
    truth = np.zeros((2, 8, 8), np.int8)
    truth[0, :2, :2], truth[1, 4:, 4:] = 1, 1
    pred = truth.copy()
    pred[1, 4:, 4:6] = 2  # half of image 1's class-1 pixels called class 2
    report = segmentation_report(pred, truth, ["background", "a", "b", "c"])["per_class_dice"]
    a, b, c = report
    assert a["dice"] == pytest.approx((1 + 2 * 8 / (8 + 16)) / 2) and a["images"] == 2
    assert b["dice"] is None and b["empty"] == 2 and b["empty_fp"] == 0.5
    assert c["dice"] is None and c["empty_fp"] == 0.0
    assert segmentation_metrics(pred, truth, 4)["dice"] == pytest.approx(a["dice"])


def test_unknown_pixels_are_never_counted():
    truth = masks(square(0, 0, 4))
    truth[0, 8:, :] = UNLABELLED
    pred = truth.clip(0)
    pred[0, 8:, :] = 1  # predicted lesion where nothing is known
    assert segmentation_metrics(pred, truth, 2)["dice"] == 1.0


def naive_hd95(a: np.ndarray, b: np.ndarray) -> float:
    """Outline pixels (a pixel with a 4-neighbour outside the mask or on the image's edge),
    all pairwise distances, each direction's 95th percentile, the larger."""

    def outline(m):
        pts = []
        for y, x in zip(*np.nonzero(m), strict=True):
            around = [(y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)]
            if any(not (0 <= v < m.shape[0] and 0 <= u < m.shape[1]) or not m[v, u]
                   for v, u in around):  # fmt: skip
                pts.append((y, x))
        return np.array(pts, float)

    pa, pb = outline(a), outline(b)
    d = np.sqrt(((pa[:, None] - pb[None]) ** 2).sum(-1))
    return max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))


def test_hd95_matches_a_brute_force_formula():
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = rng.random((20, 20)) < 0.15
        b = rng.random((20, 20)) < 0.15
        a[10, 10] = b[3, 3] = True
        assert hd95(a, b) == pytest.approx(naive_hd95(a, b))


# --- losses against naive formulas ------------------------------------------------------------


def logits_and_masks(seed=0, n=3, classes=3, size=6):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, size, size, generator=g)
    targets = torch.randint(0, classes, (n, size, size), generator=g)
    targets[0, :2] = UNLABELLED
    targets[:, :, -1] = 0
    targets[targets == 2] = 0  # class 2 absent from the whole batch
    return logits, targets


def naive_ce_dice(logits, targets) -> float:
    p = torch.softmax(logits, 1)
    ce, count = 0.0, 0
    n, c, h, w = logits.shape
    for i in range(n):
        for y in range(h):
            for x in range(w):
                t = int(targets[i, y, x])
                if t != UNLABELLED:
                    ce -= math.log(p[i, t, y, x])
                    count += 1
    dice_losses = []
    for k in range(1, c):  # foreground, pooled over the batch, known pixels only
        known = targets != UNLABELLED
        g = ((targets == k) & known).float()
        pk = p[:, k] * known
        if g.sum() == 0:
            dice_losses.append(0.0)  # absent from the batch's masks: adds nothing
            continue
        dice_losses.append(1 - float(2 * (pk * g).sum() / (pk.sum() + g.sum())))
    return ce / count + sum(dice_losses) / len(dice_losses)


def test_supervised_loss_is_cross_entropy_plus_dice():
    logits, targets = logits_and_masks()
    got = SEG.supervised_loss(logits, targets)
    assert float(got) == pytest.approx(naive_ce_dice(logits, targets), rel=1e-5)
    nobody = torch.full_like(targets, UNLABELLED)
    z = logits.clone().requires_grad_(True)
    loss = SEG.supervised_loss(z, nobody)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.isfinite(z.grad).all()


def method(name, **params):
    cls = METHODS[name]
    return cls(cls.Params(**params), Shapes(3, 1, task="segmentation"))


def test_pixel_kd_is_the_mean_over_pixels_of_the_kl_to_the_teachers():
    student, targets = logits_and_masks(0)
    teachers = [logits_and_masks(s)[0] * 2 for s in (1, 2)]
    t = 2.0
    terms = method("pixel_kd", temperature=t, kd_weight=3.0)(
        Outputs(student), [Outputs(z) for z in teachers], targets, 0.0
    )
    total, pixels = 0.0, 0
    n, c, h, w = student.shape
    for i in range(n):
        for y in range(h):
            for x in range(w):
                q = torch.softmax(student[i, :, y, x] / t, 0)
                p = sum(torch.softmax(z[i, :, y, x] / t, 0) for z in teachers) / 2
                total += float((p * (p / q).log()).sum())
                pixels += 1
    assert float(terms["pixel_kd"]) == pytest.approx(total / pixels * t * t, rel=1e-5)
    expected = float(terms["ce_dice"]) + 3.0 * float(terms["pixel_kd"])
    assert float(terms["loss"]) == pytest.approx(expected, rel=1e-6)


def test_cwd_is_the_spatial_kl_per_channel_times_t_squared_over_c():
    student, targets = logits_and_masks(0)
    teacher = logits_and_masks(3)[0] * 3
    t = 4.0
    terms = method("cwd", temperature=t)(Outputs(student), [Outputs(teacher)], targets, 0.0)
    total = 0.0
    n, c = student.shape[:2]
    for i in range(n):
        for k in range(c):
            p = torch.softmax(teacher[i, k].flatten() / t, 0)
            q = torch.softmax(student[i, k].flatten() / t, 0)
            total += float((p * (p / q).log()).sum())
    assert float(terms["cwd"]) == pytest.approx(total * t * t / (n * c), rel=1e-5)


# --- segmenters: names, sizes, stages, gradients ----------------------------------------------


def test_the_student_is_over_100_times_smaller_and_names_are_checked():
    ratio = count_params(create_segmenter(TEACHER, 2, 1)) / count_params(
        create_segmenter(STUDENT, 2, 1)
    )
    assert ratio >= 100
    job = {
        "name": "seg",
        "data": {"kind": "synthetic_ultrasound", "image_size": 48},
        "studies": {"s": {"teachers": [TEACHER], "students": ["unet-nosuch", "segnet-resnet18",
                                                                "unet3d"],
                          "method": {"name": "pixel_kd"}}},
    }  # fmt: skip
    with pytest.raises(JobError) as err:
        parse_job(job)
    assert err.value.problems == [
        "studies.s.teachers: 'unet-resnet34' needs image sizes divisible by its encoder's stride "
        "32; data.image_size is 48: use 32 or 64",
        "studies.s.students: 'unet-nosuch': encoder 'nosuch' is not a timm model",
        "studies.s.students: 'segnet-resnet18': unknown architecture 'segnet'; one of "
        "['deeplabv3plus', 'fpn', 'linknet', 'manet', 'unet', 'unetplusplus'] "
        "(<architecture>-<timm encoder>[-d<width>.<width>...], e.g. unet-resnet34)",
        "studies.s.students: 'unet3d' is a 3D network and this data is 2D: name a timm model, "
        "or use a volume data kind (decathlon, nifti_csv, medmnist3d, synthetic_volumes)",
    ]
    job["data"]["image_size"] = 32
    job["studies"]["s"]["students"] = ["resnet18"]
    with pytest.raises(JobError) as err:
        parse_job(job)
    assert "'resnet18' is not a segmentation model name" in err.value.problems[0]
    job["studies"]["s"] = {"teachers": [TEACHER], "students": [STUDENT], "method": {"name": "dkd"}}
    with pytest.raises(JobError) as err:
        parse_job(job)
    assert err.value.problems[0].startswith("studies.s.method: dkd is defined for single-label")


@pytest.mark.parametrize("name", ["unet-lcnet_035-d16.8.8", "unet-resnet18-d16.8.8", STUDENT])
def test_every_parameter_of_an_encoder_cut_short_trains(name):
    """smp runs a cut timm lcnet's deeper blocks and drops their output: parameters without a
    gradient, which data-parallel training refuses and which would count in the student's
    size. kdray drops those blocks; the model computes what the uncut one did."""
    from kdray.tasks.segmenters import _smp_model, parse_name

    model = create_segmenter(name, 2, 1)
    x = torch.randn(2, 1, 64, 64)
    model.train()
    model(x).float().mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    whole = _smp_model(parse_name(name), 2, 1, {"encoder_weights": None})
    missing, unexpected = whole.load_state_dict(model.net.state_dict(), strict=False)
    assert unexpected == [] and all(k.startswith("encoder.model.blocks.") for k in missing)
    whole.eval(), model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), whole(x))
    if name == "unet-lcnet_035-d16.8.8":
        assert count_params(model) < count_params(whole) / 5  # blocks 3-5 of 6 were dead weight


def test_stages_pair_by_part_and_stride_and_gradients_reach_adapters_never_the_teacher():
    teacher = create_segmenter("unet-resnet18", 2, 1)
    student = create_segmenter("unet-lcnet_035-d16.16.8", 2, 1)  # 3 stages: stride 8
    pairs = aligned_pairs(student, teacher)
    levels = [(student.feature_info[s]["part"], student.feature_info[s]["level"],
               teacher.feature_info[t]["level"]) for s, t, _ in pairs]  # fmt: skip
    assert levels == [("encoder", 1, 1), ("encoder", 2, 2), ("encoder", 3, 3),
                      ("decoder", 2, 2), ("decoder", 1, 1), ("decoder", 0, 0)]  # fmt: skip
    parts = tuple(p for _, _, p in pairs)
    assert METHODS["at"].feature_stages(METHODS["at"].Params(), len(pairs), parts) == [1, 2]
    l1_cls = METHODS["feature_l1"]
    chosen = l1_cls.feature_stages(l1_cls.Params(), len(pairs), parts)
    assert chosen == list(range(6))  # every encoder and decoder stage: the paper's all-layer L1
    channels = (
        tuple(student.feature_info[pairs[i][0]]["num_chs"] for i in chosen),
        (tuple(teacher.feature_info[pairs[i][1]]["num_chs"] for i in chosen),),
    )
    l1 = l1_cls(l1_cls.Params(), Shapes(2, 1, *channels, task="segmentation"))
    x = torch.randn(2, 1, 32, 32)
    targets = torch.randint(0, 2, (2, 32, 32))
    s_out = network_outputs(student, x, [pairs[i][0] for i in chosen])
    t_out = network_outputs(teacher, x, [pairs[i][1] for i in chosen])  # with grad: must not flow
    terms = l1(s_out, [t_out], targets, 0.0)
    terms["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in l1.adapters.parameters())
    assert next(student.net.encoder.parameters()).grad is not None  # the student's stem
    assert float(terms["l1"].detach()) > 0 and set(terms) == {"loss", "ce_dice", "l1"}


# --- masks move with their images -------------------------------------------------------------


def near(region: np.ndarray) -> np.ndarray:
    """`region` grown by one pixel in every direction."""
    grown = F.max_pool2d(torch.tensor(region, dtype=torch.float32)[None, None], 3, 1, 1)
    return grown[0, 0].numpy() > 0


def test_flip_rotate_crop_moves_an_asymmetric_mask_with_its_image():
    mask = np.zeros((1, 32, 32), np.int8)
    mask[0, 3:9, 4:20] = 1  # an L: a bar and a leg, asymmetric under every flip and turn
    mask[0, 3:25, 4:9] = 1
    image = (mask.astype(np.uint8) * 200 + 30)[..., None]  # the mask is visible in the image
    pipeline = [
        {"name": "HorizontalFlip", "p": 1.0},
        {"name": "Rotate", "limit": [30, 30], "border_mode": 0, "p": 1.0},
        {"name": "RandomCrop", "height": 24, "width": 24, "p": 1.0},
        {"name": "PadIfNeeded", "min_height": 32, "min_width": 32, "border_mode": 0, "p": 1.0},
    ]
    train = TrainSet(image, mask, build_train_augmentation(pipeline, seed=0), [0.0], [1 / 255])
    x, moved, _ = train[0]
    pixels = x[0].numpy()
    assert moved.shape == (32, 32) and moved.dtype == torch.int64
    known = moved.numpy() != UNLABELLED
    assert (moved.numpy() == UNLABELLED).any()  # what the rotation and padding brought in
    outside = ~known & ~near(known)  # away from the rim, where interpolation blends
    assert outside.any() and (pixels[outside] == 0).all()  # black in the image, unknown mask
    lesion = pixels > 115  # 30 and 230, the rotation's linear interpolation between them
    agree = (lesion == (moved.numpy() == 1))[known & ~(near(lesion) & near(~lesion))]
    assert agree.all()  # away from the rim, lesion pixels of image and mask coincide
    assert not np.array_equal(moved.numpy().clip(0), mask[0])  # and they did move


# --- a session and the job files ----------------------------------------------------------------


def test_attention_transfer_trains_a_segmenter_on_its_encoder_stages(tmp_path):
    """Attention transfer through the worker's own session (no Ray): the teacher online, the
    student's encoder stages but the shallowest compared, both loss terms recorded."""
    from kdray.data import prepare_data
    from kdray.spec.plan import make_plan
    from kdray.store.model_file import save_model
    from kdray.train.session import band_stop, build_session, train_epoch

    job = parse_job(
        {
            "name": "seg-at",
            "data": {"kind": "synthetic_ultrasound", "image_size": 32, "native_size": 32,
                     "train_size": 16, "valid_size": 10, "test_size": 10},
            "train": {"epochs": 1, "batch_size": 8, "augment": False},
            "studies": {"at": {"teachers": ["unet-resnet18"], "students": [STUDENT],
                               "method": {"name": "at"}}},
        }
    )  # fmt: skip
    info = prepare_data(job.data, tmp_path / "data")
    teacher_dir = tmp_path / "teacher"
    save_model(
        teacher_dir / "model.pt", create_segmenter("unet-resnet18", 2, 1), model="unet-resnet18",
        task="segmentation", num_classes=2, in_chans=1, classes=info.classes, mean=info.mean,
        std=info.std, image_size=32,
    )  # fmt: skip
    spec = next(r for r in make_plan(job).runs.values() if r.method == "at")
    session = build_session(job, spec, info, [teacher_dir], torch.device("cpu"))
    parts = [session.core.student.feature_info[i]["part"] for i in session.core.student_stages]
    assert parts == ["encoder"] * 4 and session.teachers.kind == "online"
    row = train_epoch(session, 0, band_stop(session))
    assert row["loss_at"] > 0 and row["loss_ce_dice"] > 0 and math.isfinite(row["train_loss"])


def test_the_segmentation_job_files_validate(tmp_path):
    """jobs/segmentation.yaml (offline) passes `kdray validate --quick` (its masks are not read
    there), and jobs/busi.yaml (BUSI is not shipped) parses."""
    from typer.testing import CliRunner

    from kdray.cli import app
    from kdray.spec.load import load_job
    from tests.conftest import REPO

    checked = CliRunner().invoke(
        app, ["validate", str(REPO / "jobs" / "segmentation.yaml"), "--quick",
              "--set", f"storage={tmp_path / 'runs'}"],
    )  # fmt: skip
    assert checked.exit_code == 0, checked.output
    assert "data: synthetic_ultrasound, segmentation, 2 classes" in checked.output
    job = load_job(REPO / "jobs" / "segmentation.yaml")
    assert job.data.kind == "synthetic_ultrasound" and len(job.seeds) >= 3
    assert {s.method.name for s in job.studies.values()} == {"pixel_kd", "cwd", "feature_l1"}
    busi = load_job(REPO / "jobs" / "busi.yaml", [f"data.root={tmp_path}"])
    assert busi.data.layout == "busi" and busi.data.categories == ["benign", "malignant"]


def test_an_encoder_starts_from_a_local_timm_weights_file(tmp_path):
    """`pretrained: {unet-resnet18: file}`: timm loads the file into the encoder (its stem
    summed to one channel), never a hub (cached hub weights: tests/test_weights.py)."""
    import timm

    source = timm.create_model("resnet18", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    encoder = create_segmenter("unet-resnet18", 2, 1, tmp_path / "r18.pth").net.encoder.model
    assert torch.equal(encoder.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    torch.testing.assert_close(encoder.conv1.weight[:, 0], source.conv1.weight.sum(1))
