"""Fill the weights caches (`kdray weights`): the only code of kdray that downloads weights.

Hub weights come through huggingface_hub's own `hf_hub_download` into the hub cache (it writes a
process-unique temp file and renames it into place; a failed or interrupted download removes
it), from $HF_ENDPOINT when set (a mirror). Weights timm fetches by URL stream into a temp file
beside their place in the torch hub cache and are renamed once complete; from
$KDRAY_WEIGHTS_MIRROR (a base URL serving the same file names) when set. Either way nothing
partial is ever left where a run would find it.
"""

from __future__ import annotations

import http.client
import os
import tempfile
import urllib.error
import urllib.request
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
from tqdm.std import tqdm

from kdray.tasks.weights import (
    LocalWeights,
    WeightsCaches,
    WeightsError,
    WeightsSource,
    find,
    hub_files,
    hub_repo,
    url_file_name,
)

MIRROR_ENV = "KDRAY_WEIGHTS_MIRROR"
CHUNK = 1 << 20
TIMEOUT_S = 60
PROBE_S = 10  # how long `unreachable` waits for any answer
HUB = "https://huggingface.co"


class RichBar(tqdm):
    """tqdm's interface, which huggingface_hub drives, drawn as a rich progress bar on stderr."""

    console = Console(stderr=True)

    def __init__(self, *args, **kwargs):
        kwargs.pop("name", None)
        super().__init__(*args, **{**kwargs, "gui": True, "disable": False})
        columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
        self._bar = Progress(
            TextColumn(f"downloading {self.desc}"), *columns, console=self.console, transient=True
        )
        self._bar.start()
        self._task = self._bar.add_task("download", total=self.total, completed=self.n)

    def display(self, *args, **kwargs):
        if hasattr(self, "_task"):
            self._bar.update(self._task, completed=self.n, total=self.total)

    def clear(self, *args, **kwargs):
        pass

    def close(self):
        if hasattr(self, "_task") and not self.disable:
            self.display()
            self._bar.stop()
        super().close()


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true")


def fetch(source: WeightsSource, where: WeightsCaches) -> tuple[LocalWeights, bool]:
    """The source's weights in the caches, downloaded unless already there; and whether this
    call downloaded them."""
    local = find(source, where)
    if local is not None:
        return local, False
    if source.file:
        raise WeightsError(f"{source.model}: weights file {source.file} does not exist")
    if offline():
        raise WeightsError(
            f"{source.model} ({source.label}): HF_HUB_OFFLINE is set, so nothing may be "
            "downloaded; unset it on a machine with network"
        )
    if source.hub_id:
        _from_hub(source, where)
    else:
        _from_url(source, where)
    local = find(source, where)
    if local is None:  # pragma: no cover (a download that lands elsewhere: a bug)
        raise WeightsError(f"{source.model} ({source.label}): downloaded but not found")
    return local, True


def unreachable(url: str) -> str | None:
    """Why no server answers at `url` (within seconds, honouring proxy settings), or None if
    one does, whatever its HTTP status."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=PROBE_S):
            return None
    except urllib.error.HTTPError:  # an answer: the server is there
        return None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None)
        return _first_line(reason if isinstance(reason, BaseException) else exc)


def _from_hub(source: WeightsSource, where: WeightsCaches) -> None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    repo, revision = hub_repo(source)
    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now, not at import
    # without network huggingface_hub retries for a minute, then reports each file as missing
    # from the repository: ask once, and briefly, whether the hub answers at all
    why = unreachable(endpoint or HUB)
    if why is not None:
        raise WeightsError(_unreachable_line(source, endpoint or HUB, why, "HF_ENDPOINT"))
    for name in hub_files(source):
        try:
            hf_hub_download(
                repo,
                name,
                revision=revision,
                cache_dir=where.hub,
                endpoint=endpoint,
                tqdm_class=RichBar,
            )
            return
        except LocalEntryNotFoundError as exc:  # the hub stopped answering meanwhile
            why = _first_line(exc)
            raise WeightsError(
                _unreachable_line(source, endpoint or HUB, why, "HF_ENDPOINT")
            ) from None
        except EntryNotFoundError:
            continue
        except Exception as exc:  # HTTP, connection, disk: one line, nothing kept
            raise WeightsError(
                f"{source.model} ({source.label}): {repo}/{name} from "
                f"{endpoint or 'huggingface.co'} failed: {_first_line(exc)}; nothing was kept, "
                "run again to retry"
            ) from None
    raise WeightsError(
        f"{source.model} ({source.label}): {repo} holds none of {', '.join(hub_files(source))}"
    )


def _from_url(source: WeightsSource, where: WeightsCaches) -> None:
    name = url_file_name(source.url or "")
    mirror = os.environ.get(MIRROR_ENV)
    url = f"{mirror.rstrip('/')}/{name}" if mirror else source.url or ""
    dest = where.checkpoints / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{name}.", suffix=".partial")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            _stream(url, out)
        os.replace(tmp, dest)
    except urllib.error.URLError as exc:
        if isinstance(exc, urllib.error.HTTPError) or not isinstance(exc.reason, OSError):
            raise WeightsError(
                f"{source.model} ({source.label}): {url} failed: {_first_line(exc)}; nothing "
                "was kept, run again to retry"
            ) from None
        raise WeightsError(
            _unreachable_line(source, url, _first_line(exc.reason), MIRROR_ENV)
        ) from None
    except (OSError, ValueError, http.client.HTTPException) as exc:  # reset, short
        raise WeightsError(
            f"{source.model} ({source.label}): {url} failed: {_first_line(exc)}; nothing was "
            "kept, run again to retry"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


def _stream(url: str, out) -> None:
    """Copy the body of `url` into `out`; raises when it stops short of its Content-Length."""
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        got = 0
        with RichBar(total=total, desc=url_file_name(url), unit="B", unit_scale=True) as bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                got += len(chunk)
                bar.update(len(chunk))
    if total is not None and got != total:
        raise OSError(f"download interrupted: {got} of {total} bytes arrived")


def _unreachable_line(source: WeightsSource, url: str, why: str, mirror_env: str) -> str:
    return (
        f"{source.model} ({source.label}): {url} cannot be reached ({why}); run `kdray "
        f"weights` on a machine with network (a login node), or set ${mirror_env} to a mirror "
        "this machine reaches"
    )


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
