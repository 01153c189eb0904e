"""Data kinds and the decoded-array cache every trial reads from.

A data kind is a module with a pydantic `Config` (its `data:` job section, `kind` literal
included) and `open_sources(cfg) -> (classes, {split: SplitSource})`; the cache decodes those
sources once per configuration into `<cache_root>/<kind>-<fingerprint>/`.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np

from kdray.data import (
    decathlon,
    folder,
    masks,
    medmnist,
    medmnist3d,
    mura,
    nifti_csv,
    phantoms,
    synthetic,
    synthetic_ultrasound,
)
from kdray.data.base import DataError
from kdray.data.cache import (
    SPLITS,
    DataInfo,
    fingerprint,
    has_masks,
    load_split,
    load_targets,
    read_info,
    write_cache,
)
from kdray.data.files import stamp_digest

DATA_KINDS: dict[str, ModuleType] = {
    "synthetic": synthetic,
    "medmnist": medmnist,
    "mura": mura,
    "folder": folder,
    "synthetic_ultrasound": synthetic_ultrasound,
    "masks": masks,
    # volumes (spatial rank 3): cached by `kdray.data.volumes`
    "synthetic_volumes": phantoms,
    "decathlon": decathlon,
    "medmnist3d": medmnist3d,
    "nifti_csv": nifti_csv,
}


def prepare_data(cfg, cache_root: str | Path) -> DataInfo:
    """Decode the job's data once (or reuse an earlier decode of the same configuration)."""
    if getattr(cfg, "spatial_rank", 2) == 3:
        from kdray.data.volumes import volume_data_info

        return volume_data_info(cfg, cache_root)
    # kinds that read image files (folder, MURA) list them first: an image replaced, repaired
    # or damaged after a decode gives a new fingerprint; other kinds are not opened on a hit
    opened = open_sources(cfg) if reads_image_files(cfg) else None
    stamps = {"files": cfg.file_stamps()}
    if opened is not None:
        stamps["images"] = {
            s: stamp_digest(getattr(src, "paths", [])) for s, src in opened[1].items()
        }
    fp = fingerprint({**cfg.model_dump(mode="json"), **stamps})
    dest = Path(cache_root) / f"{cfg.kind}-{fp}"
    info = read_info(dest)
    if info is not None:
        return info
    classes, sources = opened or open_sources(cfg)
    dropped = {split: len(getattr(src, "dropped", ()) or ()) for split, src in sources.items()}
    named = [line for src in sources.values() for line in getattr(src, "dropped", ()) or ()]
    extra = {"dropped_rows": dropped, "dropped_files": named[:100]} if named else {}
    warnings = data_warnings(classes, sources)
    told = {"warnings": warnings, "notes": data_notes(sources)}
    extra = {**extra, **{key: lines for key, lines in told.items() if lines}}
    return write_cache(
        dest,
        sources,
        classes,
        image_size(cfg, sources),
        cfg.channels,
        fp,
        extra=extra or None,
        on_bad_image=cfg.on_bad_image,
        task=data_task(cfg, sources),
    )


def data_warnings(classes: list[str], sources: dict) -> list[str]:
    """What the data holds that a run will not refuse but a user should hear of, one line each:
    what the data kind let pass (each source's `warnings`: masks without their image, ...),
    and labels no training image has (a multi-label model cannot learn them)."""
    lines = [line for src in sources.values() for line in getattr(src, "warnings", ()) or ()]
    labels = getattr(sources["train"], "labels", None)
    if labels is not None and np.ndim(labels) == 2:
        never = [c for c, column in zip(classes, np.asarray(labels).T, strict=False)
                 if not (column == 1).any()]  # fmt: skip
        if never:
            lines.append(
                f"label(s) {never} have no positive image in the train split: a model cannot "
                "learn them (their test AUROC is chance); add positive images or drop them "
                "from the labels"
            )
    return list(dict.fromkeys(lines))


def data_notes(sources: dict) -> list[str]:
    """How the data kind made its splits, where a user should know it (MURA's test patients);
    not a warning: nothing is wrong."""
    return [line for src in sources.values() for line in getattr(src, "notes", ()) or ()]


def image_size(cfg, sources: dict) -> int:
    """The job's `image_size`, else (an .npz given by path) the arrays' own size."""
    if cfg.image_size is not None:
        return cfg.image_size
    height, width = sources["train"].images.shape[1:3]
    size = max(height, width)
    if not 8 <= size <= 1024:
        raise DataError(
            [f"data: the images are {height}x{width} px; set data.image_size (8 to 1024)"]
        )
    return size


def data_task(cfg, sources: dict) -> str:
    """The task of the data (`kdray.tasks`): the job's `data.task_type`, else what the data kind
    says (MedMNIST's registry, a masks kind), else from the targets: masks are segmentation, a
    row of labels per image is multi-label; volumes: masks, else the kind's classification task."""
    if getattr(cfg, "spatial_rank", 2) == 3:  # a volume kind's classification says which
        if sources["train"].masks:
            return "segmentation"
        return "multi_label" if cfg.declared_task() == "multi_label" else "single_label"
    masks = has_masks(sources["train"])
    found = "segmentation" if masks else _label_task(sources["train"].labels)
    declared = cfg.task_type or cfg.declared_task()
    if declared is not None and declared != found:
        has = {
            "segmentation": "masks",
            "multi_label": "a row of labels per image",
            "single_label": "one class per image",
        }[found]
        raise DataError(
            [
                f"data.task_type: {declared} does not fit this {cfg.kind} data, which has {has} "
                f"({found}); drop data.task_type or set it to {found}"
            ]
        )
    return found


def _label_task(labels) -> str:
    return "multi_label" if np.ndim(labels) == 2 else "single_label"


def reads_image_files(cfg) -> bool:
    """Whether the data kind decodes one file per image (a `root` or `csv` of files)."""
    return any(getattr(cfg, key, None) is not None for key in ("root", "csv"))


def open_sources(cfg) -> tuple[list[str], dict]:
    """The data kind's classes and split sources, without decoding; raises `DataError`."""
    classes, sources = DATA_KINDS[cfg.kind].open_sources(cfg)
    missing = [s for s in SPLITS if s not in sources]
    if missing:
        raise DataError([f"data ({cfg.kind}): no {missing} split was produced"])
    return classes, sources


__all__ = [
    "DATA_KINDS",
    "SPLITS",
    "DataError",
    "data_task",
    "data_warnings",
    "DataInfo",
    "load_split",
    "load_targets",
    "open_sources",
    "prepare_data",
]
