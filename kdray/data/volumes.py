"""Volume data kinds and the volume cache every 3D trial will read from.

A volume kind is a module with a pydantic `Config` (its `data:` section, `kind` literal
included, on `VolumeConfigBase`) and `open_sources(cfg) -> (classes, {split: VolumeSource})`;
`prepare_volumes` decodes and prepares those sources once per configuration into
`<cache_root>/<kind>-<fingerprint>/` (`kdray.data.volume_cache`). The volume kinds are data
kinds of the job like the 2D ones (`kdray.data.DATA_KINDS`); `volume_data_info` describes
their cache to the trainer as a `DataInfo` of spatial rank 3 (its patch shape; the spacings
stay per volume in the cache).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from kdray.data import decathlon, medmnist3d, nifti_csv, phantoms
from kdray.data.base import DataError
from kdray.data.cache import DataInfo, fingerprint
from kdray.data.files import stamp_digest
from kdray.data.volume_base import TRAINING_FIELDS
from kdray.data.volume_cache import VolumeInfo, read_volume_info, write_volume_cache

VOLUME_KINDS: dict[str, ModuleType] = {
    "synthetic_volumes": phantoms,
    "medmnist3d": medmnist3d,
    "decathlon": decathlon,
    "nifti_csv": nifti_csv,
}


def open_volume_sources(cfg) -> tuple[list[str], dict]:
    """The kind's classes and split sources, without decoding; raises `DataError`."""
    classes, sources = VOLUME_KINDS[cfg.kind].open_sources(cfg)
    missing = [s for s in ("train", "valid", "test") if s not in sources]
    if missing:
        raise DataError([f"data ({cfg.kind}): no {missing} split was produced"])
    return classes, sources


def prepare_volumes(cfg, cache_root: str | Path) -> VolumeInfo:
    """Decode and prepare the job's volumes once (or reuse an earlier decode of the same
    configuration and files)."""
    # a folder or CSV of NIfTI files is listed first: a file replaced or damaged after a decode
    # gives a new fingerprint; other kinds (one .npz, or drawn) are not opened on a hit
    listed = any(getattr(cfg, key, None) is not None for key in ("root", "csv"))
    opened = open_volume_sources(cfg) if listed else None
    files = [path for source in (opened[1].values() if opened else ()) for path in source.files()]
    for key in ("path", "csv"):
        if getattr(cfg, key, None) is not None:
            files.append(Path(getattr(cfg, key)))
    prepared = cfg.model_dump(mode="json", exclude=set(TRAINING_FIELDS))
    fp = fingerprint({**prepared, "files": stamp_digest(files)})
    dest = Path(cache_root) / f"{cfg.kind}-{fp}"
    info = read_volume_info(dest)
    if info is not None:
        return info
    classes, sources = opened or open_volume_sources(cfg)
    return write_volume_cache(dest, sources, classes, fp, cfg.declared_task())


def volume_data_info(cfg, cache_root: str | Path) -> DataInfo:
    """The job's volumes prepared and cached, described as the trainer reads any data: rank 3,
    one channel, the training patch; intensities are already normalised per volume (mean 0,
    std 1 as the trainer sees them)."""
    info = prepare_volumes(cfg, cache_root)
    return DataInfo(
        path=info.path,
        fingerprint=info.fingerprint,
        classes=info.classes,
        channels=cfg.channels,
        image_size=max(cfg.patch),
        counts=info.counts,
        mean=[0.0],
        std=[1.0],
        task=info.task,
        rank=3,
        patch=list(cfg.patch),
    )
