"""Data kinds and the decoded-array cache every trial reads from.

A data kind is a module with a pydantic `Config` (its `data:` job section, `kind` literal
included) and `open_sources(cfg) -> (classes, {split: SplitSource})`; the cache decodes those
sources once per configuration into `<cache_root>/<kind>-<fingerprint>/`.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from kdray.data import synthetic
from kdray.data.cache import SPLITS, DataInfo, fingerprint, load_split, read_info, write_cache

DATA_KINDS: dict[str, ModuleType] = {
    "synthetic": synthetic,
}


def prepare_data(cfg, cache_root: str | Path) -> DataInfo:
    """Decode the job's data once (or reuse an earlier decode of the same configuration)."""
    fp = fingerprint(cfg.model_dump(mode="json"))
    dest = Path(cache_root) / f"{cfg.kind}-{fp}"
    info = read_info(dest)
    if info is not None:
        return info
    classes, sources = DATA_KINDS[cfg.kind].open_sources(cfg)
    missing = [s for s in SPLITS if s not in sources]
    if missing:
        raise ValueError(f"data kind {cfg.kind!r} gave no {missing} split")
    return write_cache(dest, sources, classes, cfg.image_size, cfg.channels, fp)


__all__ = ["DATA_KINDS", "SPLITS", "DataInfo", "load_split", "prepare_data"]
