"""Pretrained weights: job settings, the caches timm uses (built here in temporary folders),
loading through timm, run identity, `kdray weights` against a hub and a mirror on 127.0.0.1,
and a run that starts from pretrained weights through the real worker path.

No test reaches the network: `no_network` refuses (and records) every connection or name
lookup beyond this machine, and fails the test that tried one.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file
from typer.testing import CliRunner

from kdray.cli import app
from kdray.spec.job import JobError
from kdray.spec.load import parse_job
from kdray.spec.plan import make_plan
from kdray.tasks import weights as W
from kdray.tasks.models import create_model
from tests.conftest import tiny_job_dict

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
TAGS = {"resnet10t": "resnet10t.c3_in1k", "test_resnet": "test_resnet.r160_in1k"}
LEGACY = "legacy_seresnet18"  # timm fetches its weights by URL, into the torch hub cache
LEGACY_FILE = "seresnet18-4bb0ce65.pth"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Connections and name lookups beyond 127.0.0.1 raise, and fail the test afterwards."""
    attempts: list = []

    def local(host) -> bool:
        return host is None or str(host) in LOCAL_HOSTS

    def guard(real):
        def connect(sock, address):
            if sock.family in (socket.AF_INET, socket.AF_INET6) and not local(address[0]):
                attempts.append(address)
                raise ConnectionRefusedError(f"no network in tests: {address}")
            return real(sock, address)

        return connect

    real_lookup = socket.getaddrinfo

    def lookup(host, *args, **kwargs):
        if not local(host):
            attempts.append(host)
            raise socket.gaierror(f"no network in tests: {host}")
        return real_lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guard(socket.socket.connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guard(socket.socket.connect_ex))
    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    yield attempts
    assert attempts == [], f"a test tried to reach the network: {attempts}"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty weights cache (`KDRAY_WEIGHTS_CACHE`), offline as a trial is; the variables and
    huggingface_hub constants a worker sets are restored afterwards."""
    root = tmp_path / "weights"
    monkeypatch.setenv(W.CACHE_ENV, str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(root / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(root))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root / "hub"))
    return W.caches()


def imagenet_like(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A 1000-class, 3-channel state dict of `arch` with values no initialisation draws (and
    positive batch-norm variances, so that it trains)."""
    generator = torch.Generator().manual_seed(seed)
    state = timm.create_model(arch, pretrained=False).state_dict()
    drawn = {}
    for key, value in state.items():
        if key.endswith("running_var"):
            drawn[key] = 0.5 + torch.rand(value.shape, generator=generator)
        elif value.is_floating_point():
            drawn[key] = 0.1 * torch.randn(value.shape, generator=generator)
        else:
            drawn[key] = value.clone()
    return drawn


def put_in_hub(where: W.WeightsCaches, tag: str, state: dict) -> Path:
    """The hub cache as huggingface_hub lays it out: refs/main holds the snapshot's hash, with
    no newline; the snapshot holds model.safetensors."""
    repo = where.hub / f"models--timm--{tag}"
    commit = hashlib.sha1(tag.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file(state, snapshot / "model.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot / "model.safetensors"


def put_in_torch_hub(where: W.WeightsCaches, name: str, state: dict) -> Path:
    where.checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save(state, where.checkpoints / name)
    return where.checkpoints / name


@pytest.fixture(scope="module")
def legacy_state():
    return imagenet_like(LEGACY)


def job_with(tmp_path: Path, pretrained, **changes):
    raw = tiny_job_dict(tmp_path, pretrained=pretrained, **changes)
    return parse_job(raw)


# --- settings ---------------------------------------------------------------------------------


def test_pretrained_reads_as_one_word_or_per_model(tmp_path, cache):
    everything = job_with(tmp_path, "imagenet")
    assert everything.pretrained == {"default": "imagenet"}
    assert {m: s.tag for m, s in everything.weights_sources().items()} == TAGS
    per_model = job_with(tmp_path, {"default": "ImageNet", "resnet10t": None})
    assert list(per_model.weights_sources()) == ["test_resnet"]
    tagged = job_with(tmp_path, {"test_resnet": "test_resnet.r160_in1k"})
    assert tagged.weights_sources()["test_resnet"].hub_id == "timm/test_resnet.r160_in1k"
    for nothing in (None, "none", {}):
        assert job_with(tmp_path, nothing).weights_sources() == {}
    studies = {"s": {"students": [LEGACY], "method": {"name": "tfkd_virtual"}}}
    legacy = job_with(tmp_path, {"default": "imagenet"}, studies=studies)
    source = legacy.weights_sources()[LEGACY]
    assert source.hub_id is None and source.url.endswith(LEGACY_FILE)


@pytest.mark.parametrize(
    ("pretrained", "teacher", "says"),
    [
        ("imagenet", "seresnet18", "has no ImageNet weights for seresnet18"),
        ({"resnet10t": "test_resnet.r160_in1k"}, "resnet10t", "weights of test_resnet, not of"),
        ({"resnet10t": "resnet10t.in22k"}, "resnet10t", "no weights tagged resnet10t.in22k"),
        ({"default": "resnet10t.c3_in1k"}, "resnet10t", "the `default` entry"),
        ({"resnet18": "imagenet"}, "resnet10t", "pretrained.resnet18: not a model of any study"),
    ],
)
def test_unusable_settings_are_refused_in_one_line(tmp_path, pretrained, teacher, says):
    studies = {"normal": {"teachers": [teacher], "students": ["test_resnet"]}}
    with pytest.raises(JobError) as caught:
        job_with(tmp_path, pretrained, studies=studies)
    assert any(says in line for line in caught.value.problems), caught.value.problems
    assert all("\n" not in line for line in caught.value.problems)


def test_the_weights_cache_comes_from_the_job_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(W.CACHE_ENV, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert W.caches() == W.WeightsCaches(tmp_path / "hf" / "hub", tmp_path / "th")
    job = job_with(tmp_path, "imagenet", weights_cache=str(tmp_path / "nfs"))
    shared = job.weights_caches()
    assert shared.hub == tmp_path / "nfs" / "hub"
    assert shared.checkpoints == tmp_path / "nfs" / "hub" / "checkpoints"
    # what a worker gets: huggingface_hub and torch.hub see the same folders
    env = W.offline_env(shared)
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_HUB_CACHE"] == str(shared.hub)
    assert Path(env["TORCH_HOME"]) / "hub" / "checkpoints" == shared.checkpoints


# --- loading ----------------------------------------------------------------------------------


def test_hub_weights_load_offline_with_the_data_s_head(cache):
    state = imagenet_like("resnet10t")
    path = put_in_hub(cache, TAGS["resnet10t"], state)
    source = W.resolve("resnet10t", "imagenet", "pretrained")
    local = W.find(source, cache)
    assert local.path == path and local.size == path.stat().st_size
    assert local.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    model = create_model("resnet10t", 3, 3, local)
    loaded = model.state_dict()
    head = timm.models.get_pretrained_cfg("resnet10t").classifier
    assert loaded[f"{head}.weight"].shape == (3, state[f"{head}.weight"].shape[1])
    for key, tensor in state.items():
        if not key.startswith(head + "."):
            assert torch.equal(loaded[key], tensor), key


def test_a_one_channel_model_sums_the_rgb_kernels_of_its_first_convolution(cache):
    state = imagenet_like("test_resnet", seed=1)
    put_in_hub(cache, TAGS["test_resnet"], state)
    local = W.find(W.resolve("test_resnet", "imagenet", "pretrained"), cache)
    model = create_model("test_resnet", 2, 1, local)
    first = timm.models.get_pretrained_cfg("test_resnet").first_conv + ".weight"
    assert model.state_dict()[first].shape[1] == 1
    assert torch.allclose(model.state_dict()[first], state[first].sum(1, keepdim=True))
    assert model.eval()(torch.zeros(1, 1, 32, 32)).shape == (1, 2)


def test_url_weights_load_from_the_torch_hub_cache(cache, legacy_state):
    put_in_torch_hub(cache, LEGACY_FILE, legacy_state)
    local = W.find(W.resolve(LEGACY, "imagenet", "pretrained"), cache)
    assert local.path == cache.checkpoints / LEGACY_FILE
    model = create_model(LEGACY, 5, 1, local)
    loaded = model.state_dict()
    assert loaded["last_linear.weight"].shape == (5, 512)
    summed = legacy_state["layer0.conv1.weight"].sum(1, keepdim=True)
    assert torch.allclose(loaded["layer0.conv1.weight"], summed)
    same = [k for k in legacy_state if not k.startswith(("last_linear.", "layer0.conv1."))]
    assert all(torch.equal(loaded[k], legacy_state[k]) for k in same)


def test_a_missing_weight_is_one_line_naming_the_command(cache):
    source = W.resolve("resnet10t", "imagenet", "pretrained")
    assert W.find(source, cache) is None
    with pytest.raises(W.WeightsError) as caught:
        W.require(source, cache)
    line = str(caught.value)
    assert "\n" not in line and "kdray weights" in line and "resnet10t.c3_in1k" in line


# --- identity and records -------------------------------------------------------------------


def old_run_id(job, spec, weights) -> str:
    """The id formula before tags existed: the weights' entry was the job's file path."""
    from kdray.spec.plan import train_identity

    identity = {"model": spec.model, "strategy": "none", "seed": spec.seed, "band": None}
    determined = {
        **identity,
        "data": job.data.model_dump(mode="json"),
        "train": train_identity(job),
        "weights": weights,
    }
    digest = hashlib.sha256(json.dumps(determined, sort_keys=True).encode()).hexdigest()[:8]
    return f"{spec.model}-none-s{spec.seed}-{digest}"


def test_run_ids_count_the_tag_and_checksum_and_keep_file_ids(tmp_path, cache):
    put_in_hub(cache, TAGS["resnet10t"], imagenet_like("resnet10t"))
    put_in_hub(cache, TAGS["test_resnet"], imagenet_like("test_resnet"))
    job = job_with(tmp_path, "imagenet")
    plan = make_plan(job)
    teacher = plan.stage("teacher")[0]
    assert teacher.weights["tag"] == TAGS["resnet10t"]
    scratch = make_plan(job_with(tmp_path, None))
    assert {r.run_id for r in plan.runs.values()}.isdisjoint(scratch.runs)
    other = make_plan(job, {"resnet10t": "0" * 64, "test_resnet": "1" * 64})
    assert {r.run_id for r in plan.runs.values()}.isdisjoint(other.runs)
    assert list(make_plan(job).runs) == list(plan.runs)  # stable
    # a local file, as before tags: the same id as then
    path = tmp_path / "w.pth"
    torch.save(imagenet_like("resnet10t"), path)
    file_job = job_with(tmp_path, {"resnet10t": str(path)})
    spec = make_plan(file_job).stage("teacher")[0]
    assert spec.run_id == old_run_id(file_job, spec, str(path))
    assert spec.weights["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_versions_json_records_the_weights_used(tmp_path, cache, monkeypatch):
    from kdray.store.experiment import Experiment, ExperimentError

    put_in_hub(cache, TAGS["resnet10t"], imagenet_like("resnet10t"))
    path = put_in_hub(cache, TAGS["test_resnet"], imagenet_like("test_resnet"))
    job = job_with(tmp_path, "imagenet")
    exp = Experiment.create(job)
    records = json.loads((exp.root / "versions.json").read_text())["weights"]
    assert [(r["name"], r["tag"]) for r in records] == sorted(TAGS.items())
    assert records[1]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert records[1]["size"] == path.stat().st_size
    # a damaged plan is rebuilt with the recorded checksums, even where the weights are not
    ids = list(exp.plan().runs)
    (exp.root / "plan.json").write_text("{")
    monkeypatch.setenv(W.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert list(exp.plan().runs) == ids
    monkeypatch.setenv(W.CACHE_ENV, str(cache.torch_home))
    # a started experiment does not silently switch to other weights
    (exp.run_dir("x")).mkdir(parents=True)
    (exp.run_dir("x") / "attempts.json").write_text('{"attempts": 1}')
    save_file(imagenet_like("test_resnet", seed=5), path)
    with pytest.raises(ExperimentError, match="started from other pretrained weights"):
        Experiment.create(job)
    # nor does a resume: refused before anything starts, in one line
    result = CliRunner().invoke(app, ["resume", str(exp.root)])
    assert result.exit_code == 2, result.output
    assert "but tiny's runs were planned with" in result.output
    path.unlink()
    result = CliRunner().invoke(app, ["resume", str(exp.root)])
    assert result.exit_code == 2 and f"kdray weights {exp.root / 'job.json'}" in result.output


# --- the CLI on a machine without the weights ---------------------------------------------------


def write_job(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_run_without_the_weights_refuses_before_anything(tmp_path, cache):
    job_file = write_job(tmp_path, tiny_job_dict(tmp_path, pretrained="imagenet"))
    put_in_hub(cache, TAGS["test_resnet"], imagenet_like("test_resnet"))
    result = CliRunner().invoke(app, ["run", str(job_file), "--set", "train.epochs=1"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "resnet10t (resnet10t.c3_in1k)" in errors[0]
    assert f"kdray weights {job_file} --set=train.epochs=1" in errors[0]
    assert not (tmp_path / "runs").exists()  # no experiment folder
    listed = CliRunner().invoke(app, ["validate", str(job_file), "--quick"])
    assert listed.exit_code == 2
    assert "weights: resnet10t resnet10t.c3_in1k: missing" in listed.output
    present = r"weights: test_resnet test_resnet.r160_in1k: present, .* sha256 [0-9a-f]{64}"
    assert re.search(present, listed.output)
    put_in_hub(cache, TAGS["resnet10t"], imagenet_like("resnet10t"))
    ok = CliRunner().invoke(app, ["validate", str(job_file), "--quick"])
    assert ok.exit_code == 0, ok.output


# --- kdray weights against a hub and a mirror on 127.0.0.1 ---------------------------------------


class LocalServer:
    """Stands in for the Hugging Face hub (`/<repo>/resolve/<revision>/<file>`, with the headers
    huggingface_hub reads) and for a plain mirror (`/files/<name>`). mode "short": every body
    stops at half its Content-Length; a retry asking for the rest gets 503."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.mode, self.requests = files, "ok", []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _body(self) -> bytes | None:
                path = urllib.parse.unquote(self.path.split("?")[0])
                hub = re.match(r"^/(.+)/resolve/[^/]+/(.+)$", path)
                key = f"{hub[1]}/{hub[2]}" if hub else path.removeprefix("/files/")
                server.requests.append((self.command, key))
                return server.files.get(key)

            def _head(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Repo-Commit", "a" * 40)
                self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
                self.end_headers()

            def do_HEAD(self):  # noqa: N802 (http.server's name)
                body = self._body()
                if body is None:
                    self.send_error(404)
                    return
                self._head(body)

            def do_GET(self):  # noqa: N802
                body = self._body()
                if body is None or (server.mode == "short" and self.headers.get("Range")):
                    self.send_error(404 if body is None else 503)
                    return
                self._head(body)
                self.wfile.write(body[: len(body) // 2] if server.mode == "short" else body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def online(cache, monkeypatch):
    """A machine with network (the local server only): offline mode off."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.file_download.time.sleep", lambda s: None)  # retries
    return cache


def hub_endpoint(monkeypatch, url: str) -> None:
    """HF_ENDPOINT as a fresh `kdray weights` process sees it. huggingface_hub read it when this
    test process imported it, for more than downloads: it also asks the endpoint once for a
    registry of AI agents (user-agent detection); that registry is given here, empty."""
    from huggingface_hub.utils import _detect_agent

    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(_detect_agent, "_registry", _detect_agent._EMPTY_REGISTRY)


def safetensors_bytes(tmp_path: Path, arch: str) -> bytes:
    path = tmp_path / f"{arch}.safetensors"
    save_file(imagenet_like(arch), path)
    return path.read_bytes()


def test_kdray_weights_fills_the_hub_cache_from_an_endpoint(tmp_path, online, monkeypatch):
    body = safetensors_bytes(tmp_path, "test_resnet")
    server = LocalServer({"timm/test_resnet.r160_in1k/model.safetensors": body})
    hub_endpoint(monkeypatch, server.url)
    raw = tiny_job_dict(tmp_path, pretrained={"test_resnet": "imagenet"})
    job_file = write_job(tmp_path, raw)
    result = CliRunner().invoke(app, ["weights", str(job_file)])
    assert result.exit_code == 0, result.output
    sha = hashlib.sha256(body).hexdigest()
    line = f"test_resnet  test_resnet.r160_in1k  {len(body) / 1e6:.1f} MB  sha256 {sha}  downloaded"
    assert line in result.output
    repo = online.hub / "models--timm--test_resnet.r160_in1k"
    assert (repo / "refs" / "main").read_text() == "a" * 40
    assert (repo / "snapshots" / ("a" * 40) / "model.safetensors").read_bytes() == body
    again = CliRunner().invoke(app, ["weights", str(job_file)])
    assert "already cached" in again.output
    gets = [key for method, key in server.requests if method == "GET"]
    assert gets == ["timm/test_resnet.r160_in1k/model.safetensors"]  # once


def test_an_interrupted_hub_download_leaves_no_partial_file(tmp_path, online, monkeypatch):
    body = safetensors_bytes(tmp_path, "test_resnet")
    server = LocalServer({"timm/test_resnet.r160_in1k/model.safetensors": body})
    server.mode = "short"
    hub_endpoint(monkeypatch, server.url)
    job_file = write_job(tmp_path, tiny_job_dict(tmp_path, pretrained={"test_resnet": "imagenet"}))
    result = CliRunner().invoke(app, ["weights", str(job_file)])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "nothing was kept" in errors[0], result.output
    repo = online.hub / "models--timm--test_resnet.r160_in1k"
    kept = [p.relative_to(repo) for p in repo.rglob("*") if p.is_file()]
    assert kept == [Path("refs/main")]  # the commit hash it asked for; no blob, no .incomplete
    assert not (online.hub / ".locks").exists() or all(
        p.stat().st_size == 0 for p in (online.hub / ".locks").rglob("*") if p.is_file()
    )  # huggingface_hub's lock files, empty
    assert W.find(W.resolve("test_resnet", "imagenet", "p"), online) is None


def test_kdray_weights_fetches_url_weights_from_a_mirror(
    tmp_path, online, monkeypatch, legacy_state
):
    from kdray.tasks.weights_fetch import MIRROR_ENV

    path = tmp_path / LEGACY_FILE
    torch.save(legacy_state, path)
    server = LocalServer({LEGACY_FILE: path.read_bytes()})
    monkeypatch.setenv(MIRROR_ENV, f"{server.url}/files")
    raw = tiny_job_dict(tmp_path, pretrained="imagenet")
    raw["studies"] = {"s": {"students": [LEGACY], "method": {"name": "tfkd_virtual"}}}
    job_file = write_job(tmp_path, raw)
    server.mode = "short"
    cut = CliRunner().invoke(app, ["weights", str(job_file)])
    assert cut.exit_code == 2 and "download interrupted" in cut.output
    assert list(online.checkpoints.iterdir()) == []  # no partial file
    server.mode = "ok"
    done = CliRunner().invoke(app, ["weights", str(job_file)])
    assert done.exit_code == 0, done.output
    assert (online.checkpoints / LEGACY_FILE).read_bytes() == path.read_bytes()
    assert f"sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}  downloaded" in done.output


def test_kdray_weights_says_at_once_when_the_hub_or_mirror_cannot_be_reached(
    tmp_path, online, monkeypatch
):
    from kdray.tasks.weights_fetch import MIRROR_ENV

    closed = "http://127.0.0.1:9"  # nothing listens: refused at once, as an offline host is
    hub_endpoint(monkeypatch, closed)
    monkeypatch.setenv(MIRROR_ENV, f"{closed}/files")
    raw = tiny_job_dict(tmp_path, pretrained={"test_resnet": "imagenet"})
    raw["studies"]["legacy"] = {"students": [LEGACY], "method": {"name": "tfkd_virtual"}}
    raw["pretrained"][LEGACY] = "imagenet"
    started = time.monotonic()
    result = CliRunner().invoke(app, ["weights", str(write_job(tmp_path, raw))])
    assert time.monotonic() - started < 30  # not a minute of retries per file
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error")]
    assert len(errors) == 2, result.output  # one per weight
    hub, mirror = sorted(errors, key=lambda line: LEGACY in line)
    assert f"{closed} cannot be reached" in hub and "$HF_ENDPOINT" in hub, hub
    assert f"{closed}/files/{LEGACY_FILE} cannot be reached" in mirror, mirror
    assert f"${MIRROR_ENV}" in mirror and "machine with network" in mirror
    assert "holds none of" not in result.output


def test_kdray_weights_refuses_when_offline(tmp_path, cache):
    job_file = write_job(tmp_path, tiny_job_dict(tmp_path, pretrained={"test_resnet": "imagenet"}))
    result = CliRunner().invoke(app, ["weights", str(job_file)])
    assert result.exit_code == 2 and "HF_HUB_OFFLINE is set" in result.output


# --- a run from pretrained weights, through the real worker path ---------------------------------


def test_a_run_starts_from_pretrained_weights_in_the_worker(tmp_path, cache):
    from kdray.data import prepare_data
    from kdray.grid.local_ray import worker_env
    from kdray.grid.tune import worker_loop
    from tests.test_worker import run_local

    put_in_hub(cache, TAGS["resnet10t"], imagenet_like("resnet10t"))
    path = put_in_hub(cache, TAGS["test_resnet"], imagenet_like("test_resnet"))
    job = job_with(tmp_path, "imagenet", train={"epochs": 1, "batch_size": 16, "lr": 0.003})
    assert worker_env(job)["runtime_env"]["env_vars"]["HF_HUB_OFFLINE"] == "1"
    plan = make_plan(job)
    data = prepare_data(job.data, tmp_path / "data")
    teacher = plan.stage("teacher")[0]
    run_dir, summary = run_local(tmp_path, job, teacher, data, loop=worker_loop)
    assert summary["status"] == "finished" and summary["train_acc"] > 0, summary
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True  # the worker forced it
    # the worker checks the file against the checksum the run was planned with
    student = next(r for r in plan.stage("student") if r.model == "test_resnet")
    save_file(imagenet_like("test_resnet", seed=9), path)
    with pytest.raises(FileNotFoundError):  # no summary.json: the run failed, alone
        run_local(tmp_path, job, student, data, [run_dir], loop=worker_loop)
    failure = json.loads((tmp_path / "runs" / student.run_id / "failure.json").read_text())
    assert "but the run was planned with" in failure["error"]


def test_a_segmenter_s_encoder_starts_from_its_timm_weights(cache):
    from kdray.tasks import get_task

    state = imagenet_like("resnet10t", seed=2)
    put_in_hub(cache, TAGS["resnet10t"], state)
    source = W.resolve("unet-resnet10t", "imagenet", "pretrained")
    assert (source.model, source.tag) == ("unet-resnet10t", TAGS["resnet10t"])
    local = W.find(source, cache)
    model = get_task("segmentation").create_model("unet-resnet10t", 2, 1, local)
    encoder = model.net.encoder.state_dict()
    first = timm.models.get_pretrained_cfg("resnet10t").first_conv + ".weight"
    assert torch.allclose(encoder[f"model.{first}"], state[first].sum(1, keepdim=True))
    loaded = [k for k in state if f"model.{k}" in encoder and k != first]
    assert len(loaded) == len(encoder) - 1  # every encoder tensor but the stem's, unchanged
    assert all(torch.equal(encoder[f"model.{k}"], state[k]) for k in loaded)
    assert model.eval()(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)
    # a file of another timm model is named, key by key
    other = put_in_torch_hub(cache, "resnet18.pth", imagenet_like("resnet18"))
    with pytest.raises(ValueError, match=r"does not fit resnet10t: .*keys missing"):
        get_task("segmentation").create_model("unet-resnet10t", 2, 1, other)


@pytest.mark.parametrize(
    "model, value, says",
    [
        ("unet-resnet10t", "resnet18.a1_in1k", "are weights of resnet18, not of resnet10t"),
        ("unet-lcnet_035-d16.16.8.8.8", "imagenet", "for lcnet_035 (the encoder of unet-lcnet"),
    ],
)
def test_a_segmenter_s_weights_are_its_encoder_s(model, value, says):
    with pytest.raises(W.WeightsError, match=re.escape(says)):
        W.resolve(model, value, f"pretrained.{model}")


def test_a_segmentation_job_asking_imagenet_of_an_encoder_without_is_refused_in_one_line(tmp_path):
    from tests.conftest import REPO

    result = CliRunner().invoke(
        app, ["validate", str(REPO / "jobs" / "segmentation.yaml"), "--quick",
              "--set", "pretrained=imagenet", "--set", f"storage={tmp_path}"],
    )  # fmt: skip
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "for lcnet_035 (the encoder of unet-lcnet_035-d16.16.8.8.8)" in result.output
