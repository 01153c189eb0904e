"""Fetch one registry file into the local MedMNIST folder, verified before anyone reads it.

The body streams into a temp file beside the destination (same file system, so the final
`os.replace` is atomic) while its MD5 is computed; only a complete body with the registry's
MD5 is renamed into place. Anything else (a short body, a dropped connection, a wrong MD5,
Ctrl-C) removes the temp file and raises `DataError` with one line saying what to do, so a
half-written file is never mistaken for the data set.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from kdray.data.base import DataError
from kdray.data.medmnist_registry import RemoteFile

CHUNK = 1 << 20
PROGRESS_FROM_BYTES = 8 << 20  # a bar only for downloads long enough to watch
TIMEOUT_S = 60


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def local_copy(remote: RemoteFile, folder: Path) -> Path:
    """`remote`'s file in `folder`, downloaded there first if absent; `DataError` if the file
    there has another MD5 than the registry's."""
    local = folder / remote.filename
    if not local.is_file():
        return fetch(remote, local)
    md5 = file_md5(local)
    if md5 != remote.md5:
        raise DataError(
            [
                f"{local}: MD5 {md5} is not the registry's {remote.md5} for {remote.name} size "
                f"{remote.size}; delete the file and kdray downloads it again"
            ]
        )
    return local


def fetch(remote: RemoteFile, dest: Path, console: Console | None = None) -> Path:
    """Download `remote` to `dest` (its folder is created); returns `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            md5 = _stream(remote, out, console or Console(stderr=True))
        if md5 != remote.md5:
            raise DataError(
                [
                    f"{remote.url}: MD5 {md5} does not match the registry's {remote.md5} for "
                    f"{remote.name} size {remote.size}; nothing was kept: run again, or "
                    f"download it yourself to {dest} and check it"
                ]
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _stream(remote: RemoteFile, out, console: Console) -> str:
    """Copy the body into `out`; the MD5 of what arrived, or DataError if it stopped short."""
    digest = hashlib.md5(usedforsecurity=False)
    got, expected = 0, None
    retry = f"nothing was kept: run again to retry, or download it yourself from {remote.url}"
    try:
        with urllib.request.urlopen(remote.url, timeout=TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            with _progress(console, remote, expected) as advance:
                while chunk := response.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    got += len(chunk)
                    advance(len(chunk))
    except urllib.error.HTTPError as exc:
        raise DataError([f"{remote.url}: HTTP {exc.code} {exc.reason}; {retry}"]) from None
    except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError, reset, timeout
        reason = getattr(exc, "reason", None) or exc
        raise DataError(
            [f"{remote.url}: download interrupted after {got} bytes ({reason}); {retry}"]
        ) from None
    if expected is not None and got != expected:
        raise DataError(
            [f"{remote.url}: download interrupted: {got} of {expected} bytes arrived; {retry}"]
        )
    return digest.hexdigest()


@contextmanager
def _progress(console: Console, remote: RemoteFile, total: int | None) -> Iterator:
    """A rich bar for a long download, a no-op for a short one; yields `advance(n_bytes)`."""
    if total is not None and total < PROGRESS_FROM_BYTES:
        yield lambda n: None
        return
    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(
        TextColumn(f"downloading {remote.filename}"), *columns, console=console, transient=True
    ) as bar:
        task = bar.add_task("download", total=total)
        yield lambda n: bar.advance(task, n)
