"""Reading one array of an `.npz` archive, every way it can fail named in one line."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from kdray.data.base import DataError


def read_array(archive: np.lib.npyio.NpzFile, path: Path, key: str) -> np.ndarray:
    """`archive[key]`, or `DataError` naming the file and array: an object (pickled) array,
    which `allow_pickle=False` refuses, or a damaged member."""
    try:
        return archive[key]
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise DataError([f"{path}: {key} cannot be read ({exc})"]) from None
        raise DataError(
            [
                f"{path}: {key} holds Python objects (a pickled object array), which kdray does "
                "not load: save it as a numeric array (uint8 images, integer labels)"
            ]
        ) from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(
            [f"{path}: {key} is damaged ({exc}); copy or download the file again"]
        ) from None
