"""MedMNIST by name: the registry and the download, against a small file served on 127.0.0.1.

Nothing here reaches the internet: `registry()` is monkeypatched to one made-up set whose files
live on a local HTTP server that can also send a wrong body or cut the transfer short.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from kdray.cli import app
from kdray.data import DataError, medmnist_download, medmnist_registry, open_sources
from kdray.data.medmnist import Config, data_file
from kdray.data.medmnist_registry import MedMNISTSet, lookup

REPO = Path(__file__).resolve().parents[1]


def tiny_npz_bytes(tmp_path: Path, side: int) -> bytes:
    rng = np.random.default_rng(side)
    arrays = {}
    for key, n in (("train", 12), ("val", 4), ("test", 6)):
        arrays[f"{key}_images"] = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
        arrays[f"{key}_labels"] = (np.arange(n) % 3).reshape(-1, 1)
    path = tmp_path / f"tiny{side}.npz"
    path.parent.mkdir(exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path.read_bytes()


class Server:
    """Serves `files` by name; `mode` makes it misbehave: 'short' promises more than it sends."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.mode, self.requests = files, "ok", []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                name = self.path.split("?")[0].rsplit("/", 1)[-1]
                server.requests.append(name)
                body = server.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.mode == "short":
                    body = body[: len(body) // 2]  # then the connection closes
                elif server.mode == "corrupt":
                    body = bytes(b ^ 0xFF for b in body[:64]) + body[64:]
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A registry of one set, 'tinymnist' (3 RGB classes, sizes 28 and 64), served locally."""
    files = {"tinymnist.npz": tiny_npz_bytes(tmp_path / "served", 28)}
    files["tinymnist_64.npz"] = tiny_npz_bytes(tmp_path / "served", 64)
    server = Server(files)
    tiny = MedMNISTSet(
        task="multi-class",
        n_channels=3,
        labels=("red", "green", "blue"),
        md5={
            28: hashlib.md5(files["tinymnist.npz"]).hexdigest(),
            64: hashlib.md5(files["tinymnist_64.npz"]).hexdigest(),
        },
        n_samples={"train": 12, "val": 4, "test": 6},
        license="CC BY 4.0",
        base_url=server.url,
    )
    sets = {"tinymnist": tiny, "chestmnist": medmnist_registry.SETS["chestmnist"]}
    monkeypatch.setattr(medmnist_registry, "registry", lambda: sets)
    monkeypatch.delenv(medmnist_registry.MIRROR_ENV, raising=False)
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def test_first_use_downloads_then_reads_the_local_copy(tmp_path, served):
    folder = tmp_path / "medmnist"
    cfg = Config(name="tinymnist", size=64, folder=folder)
    assert (cfg.image_size, cfg.channels) == (64, 3)  # the set's size and channels by default
    classes, sources = open_sources(cfg)
    assert classes == ["red", "green", "blue"]  # named from the registry
    assert {s: len(src) for s, src in sources.items()} == {"train": 12, "valid": 4, "test": 6}
    assert sources["train"].image(0).shape == (64, 64, 3)
    assert sorted(p.name for p in folder.iterdir()) == ["tinymnist_64.npz"]  # medmnist's name
    assert (folder / "tinymnist_64.npz").read_bytes() == served.files["tinymnist_64.npz"]
    open_sources(cfg)
    assert served.requests == ["tinymnist_64.npz"]  # the second use read the local copy


def test_a_long_download_shows_progress_and_lands_the_same_file(tmp_path, served, monkeypatch):
    monkeypatch.setattr(medmnist_download, "PROGRESS_FROM_BYTES", 0)
    path = data_file(Config(name="tinymnist", folder=tmp_path / "medmnist"))
    assert path == tmp_path / "medmnist" / "tinymnist.npz"
    assert path.read_bytes() == served.files["tinymnist.npz"]


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("corrupt", "does not match the registry's"),
        ("short", "download interrupted"),
    ],
)
def test_a_bad_transfer_leaves_no_file_and_says_what_to_do(tmp_path, served, mode, message):
    served.mode = mode
    folder = tmp_path / "medmnist"
    with pytest.raises(DataError) as err:
        data_file(Config(name="tinymnist", folder=folder))
    assert len(err.value.problems) == 1
    line = err.value.problems[0]
    assert message in line and "nothing was kept: run again" in line
    assert list(folder.iterdir()) == []  # no half-written file, no temp file
    served.mode = "ok"
    assert data_file(Config(name="tinymnist", folder=folder)).is_file()  # a retry just works


def test_a_missing_remote_file_is_one_line(tmp_path, served):
    del served.files["tinymnist.npz"]
    with pytest.raises(DataError, match=r"HTTP 404 .*nothing was kept"):
        data_file(Config(name="tinymnist", folder=tmp_path / "medmnist"))
    assert list((tmp_path / "medmnist").iterdir()) == []


def test_a_local_file_with_the_wrong_md5_is_not_used(tmp_path, served):
    (tmp_path / "medmnist").mkdir()
    (tmp_path / "medmnist" / "tinymnist.npz").write_bytes(served.files["tinymnist_64.npz"])
    with pytest.raises(DataError) as err:
        data_file(Config(name="tinymnist", folder=tmp_path / "medmnist"))
    assert err.value.problems[0].startswith(f"{tmp_path / 'medmnist' / 'tinymnist.npz'}: MD5 ")
    assert "delete the file and kdray downloads it again" in err.value.problems[0]
    assert served.requests == []


def test_validate_reports_an_interrupted_download_in_one_line(tmp_path, served, monkeypatch):
    served.mode = "short"
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(
        app,
        [
            "validate",
            "jobs/medmnist.yaml",
            "--set",
            "data.name=tinymnist",
            "--set",
            f"data.folder={tmp_path / 'medmnist'}",
        ],
    )
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "download interrupted" in lines[0], result.output
    assert list((tmp_path / "medmnist").iterdir()) == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "organmnist3d"}, "organmnist3d is a 3D MedMNIST set"),
        ({"name": "tinymnist", "size": 128}, "tinymnist is published at sizes [28, 64], not 128"),
        ({"name": "nosuchmnist"}, "'nosuchmnist' is not a MedMNIST v2 2D set; pick one of"),
        ({}, "give exactly one of path"),
    ],
)
def test_config_refuses_what_cannot_be_trained(served, fields, message):
    with pytest.raises(ValidationError) as err:
        Config(**fields)
    assert message in str(err.value)


def test_mirror_replaces_the_zenodo_record(monkeypatch):
    monkeypatch.delenv(medmnist_registry.MIRROR_ENV, raising=False)
    remote = lookup("pneumoniamnist", 64)
    assert remote.url == (
        "https://zenodo.org/records/10519652/files/pneumoniamnist_64.npz?download=1"
    )
    assert remote.md5 == "8f4eceb4ccffa70c672198ea285246c6"
    monkeypatch.setenv(medmnist_registry.MIRROR_ENV, "http://mirror.local/medmnist/")
    assert lookup("pneumoniamnist", 28).url == (
        "http://mirror.local/medmnist/pneumoniamnist.npz?download=1"
    )


def test_vendored_registry_matches_the_medmnist_package():
    spec = importlib.util.find_spec("medmnist")  # finds it without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the medmnist package is not installed")
    source = Path(next(iter(spec.submodule_search_locations)), "info.py").read_text()
    assignment = next(
        node
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "INFO"
    )
    info = ast.literal_eval(assignment.value)
    for name, known in {**medmnist_registry.SETS, **medmnist_registry.SETS_3D}.items():
        theirs = info[name]
        for size, md5 in known.md5.items():
            suffix = "" if size == 28 else f"_{size}"
            assert theirs[f"MD5{suffix}"] == md5
            assert theirs[f"url{suffix}"] == lookup_url(name, size)
        assert [theirs["label"][str(i)] for i in range(len(known.labels))] == list(known.labels)
        assert (theirs["task"], theirs["n_channels"]) == (known.task, known.n_channels)


def lookup_url(name: str, size: int) -> str:
    if name in medmnist_registry.SETS_3D:
        return medmnist_registry.lookup_3d(name, size).url
    if medmnist_registry.registry()[name].task.startswith("multi-label"):
        stem = name if size == 28 else f"{name}_{size}"
        return f"{medmnist_registry.ZENODO_RECORD}/{stem}.npz?download=1"
    return lookup(name, size).url
