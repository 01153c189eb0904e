"""The warning for defective-teacher bands a majority-class guesser can land in."""

import numpy as np

from kdray.data.cache import DataInfo
from kdray.spec.describe import band_warnings
from kdray.spec.job import Job
from tests.conftest import tiny_job_dict


def imbalanced_data(tmp_path) -> DataInfo:
    labels = np.array([0] * 3 + [1] * 7)  # always predicting "ABNORMAL" scores 0.70
    np.save(tmp_path / "valid_labels.npy", labels)
    np.save(tmp_path / "valid_images.npy", np.zeros((10, 8, 8, 1), np.uint8))
    return DataInfo(str(tmp_path), "f", ["NORMAL", "ABNORMAL"], 1, 8, {}, [0.5], [0.25])


def job_with_band(tmp_path, band) -> Job:
    study = {"teachers": ["resnet10t"], "students": ["test_resnet"], "teacher_val_band": band}
    return Job.model_validate(tiny_job_dict(tmp_path, studies={"defective": study}))


def test_band_starting_below_the_majority_rate_is_flagged(tmp_path):
    warnings = band_warnings(job_with_band(tmp_path, [0.5, 0.75]), imbalanced_data(tmp_path))
    assert len(warnings) == 1
    assert "studies.defective.teacher_val_band" in warnings[0]
    assert "0.700" in warnings[0] and "ABNORMAL" in warnings[0]


def test_band_above_the_majority_rate_passes(tmp_path):
    assert band_warnings(job_with_band(tmp_path, [0.75, 0.85]), imbalanced_data(tmp_path)) == []
