"""Pretrained weights: which file a model starts from, where it lies on this machine, its checksum.

A job names weights per model (`pretrained` in kdray.spec.job): `imagenet` (timm's default
pretrained tag of the model), `<model>.<tag>` (any timm pretrained tag), a local file, or none.
A segmenter (`unet-resnet34`) takes its encoder's weights (`resnet34`'s tags, or a file of that
timm model). timm keeps what it downloads in two caches, and so does kdray:

- the Hugging Face hub cache, for the weights timm publishes there (`timm/<model>.<tag>`):
  `<hub>/models--timm--<model>.<tag>/refs/main` (a commit hash) and
  `<hub>/models--timm--<model>.<tag>/snapshots/<hash>/model.safetensors`;
- the torch hub cache, for the weights timm fetches by URL (the legacy SE-ResNets):
  `<torch home>/hub/checkpoints/<file name of the URL>`.

Nothing here touches the network (`kdray.tasks.weights_fetch` fills the caches: `kdray weights`).
A model loads its file through timm with `pretrained_cfg_overlay={"file": ...}` (`timm_name`,
`timm_overlay`), so timm never looks anywhere else; any timm-built network (a segmentation
encoder, say) can start from the same `LocalWeights`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

IMAGENET = "imagenet"
NONE = "none"
KEYWORDS = (IMAGENET, NONE)
DEFAULT = "default"  # the job-wide entry of `pretrained`
CACHE_ENV = "KDRAY_WEIGHTS_CACHE"
# what timm loads from a hub repo, in its order (safetensors first)
HUB_FILES = ("model.safetensors", "pytorch_model.bin")
FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".tar")
TAG_SHAPE = re.compile(r"^[\w-]+\.[\w-]+$")
CHUNK = 1 << 20


class WeightsError(Exception):
    """Weights that cannot be used here; the message is one line that says what to do."""


@dataclass(frozen=True)
class WeightsSource:
    """What a job asks a model to start from: the same on every machine."""

    model: str
    tag: str | None = None  # timm's `<model>.<tag>`; None for a local file
    file: str | None = None  # a local file, absolute
    hub_id: str | None = None  # `timm/<model>.<tag>`, optionally `@revision`
    hub_file: str | None = None  # the tag's own file name on the hub, when it has one
    url: str | None = None  # where timm downloads it when it has no hub id

    @property
    def label(self) -> str:
        return self.tag or self.file or ""


@dataclass(frozen=True)
class WeightsCaches:
    """Where downloaded weights lie: the Hugging Face hub cache and the torch home."""

    hub: Path
    torch_home: Path

    @property
    def checkpoints(self) -> Path:
        """timm's downloads by URL: torch.hub's `<TORCH_HOME>/hub/checkpoints`."""
        return self.torch_home / "hub" / "checkpoints"

    def env(self) -> dict[str, str]:
        """The variables that point huggingface_hub and torch.hub at these caches."""
        return {"HF_HUB_CACHE": str(self.hub), "TORCH_HOME": str(self.torch_home)}

    def describe(self) -> str:
        return f"hub cache {self.hub}, torch hub cache {self.checkpoints}"


@dataclass(frozen=True)
class LocalWeights:
    """A source found on this machine: its file, checksum and size."""

    source: WeightsSource
    path: Path
    sha256: str
    size: int

    def record(self) -> dict:
        """What `versions.json` keeps of it: name, tag (or file), sha256, size."""
        where = {"tag": self.source.tag} if self.source.tag else {"file": self.source.file}
        return {"name": self.source.model, **where, "sha256": self.sha256, "size": self.size}

    def timm_name(self) -> str:
        """The name to give `timm.create_model`: the tag picks the pretrained config (its class
        count, first convolution and classifier), so timm adapts the right layers."""
        return self.source.tag or self.source.model

    def timm_overlay(self) -> dict:
        """`pretrained_cfg_overlay` that loads this file and nothing else (no hub, no URL)."""
        return {"file": str(self.path), "hf_hub_id": None, "url": None}


# --- what a setting asks for --------------------------------------------------------------------


def setting_kind(value: str) -> str:
    """`imagenet`, `none`, `tag` (`<model>.<tag>`) or `file`. A tag-shaped value that names an
    existing file, or ends like a weights file (`w.pth`), is a file."""
    if value.lower() in KEYWORDS:
        return value.lower()
    path_like = any(c in value for c in "/\\~") or value.lower().endswith(FILE_SUFFIXES)
    if TAG_SHAPE.match(value) and not path_like and not Path(value).exists():
        return "tag"
    return "file"


def normalise(value: str) -> str:
    """A setting as the job keeps it: keywords in lower case, files as absolute paths (Ray
    workers do not share the CLI's working directory), tags as given."""
    kind = setting_kind(value)
    if kind == "file":
        return str(Path(value).expanduser().resolve())
    return kind if kind in KEYWORDS else value


def resolve(model: str, value: str | None, where: str) -> WeightsSource | None:
    """The weights `value` names for `model` (None: start from scratch); `WeightsError` naming
    `where` when timm has no such weights."""
    import timm
    from timm.models import get_pretrained_cfg

    if value is None or setting_kind(value) == NONE:
        return None
    kind = setting_kind(value)
    if kind == "file":
        return WeightsSource(model, file=str(Path(value).expanduser().resolve()))
    timm_model = timm_model_of(model)
    name = timm_model if kind == IMAGENET else value
    arch = name.split(".", 1)[0]
    if kind == "tag" and arch != timm_model.split(".", 1)[0]:
        raise WeightsError(
            f"{where}: {value} are weights of {arch}, not of {timm_model}; give "
            f"{timm_model}.<tag> ({_tags(timm_model)}) or a file"
        )
    try:
        cfg = get_pretrained_cfg(name) if timm.is_model(arch) else None
    except RuntimeError:  # an unknown tag
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise WeightsError(f"{where}: {_no_weights(model, timm_model, value)}")
    return WeightsSource(
        model,
        tag=f"{cfg.architecture}.{cfg.tag}",
        hub_id=cfg.hf_hub_id or None,
        hub_file=cfg.hf_hub_filename or None,
        url=cfg.url or None,
    )


def timm_model_of(model: str) -> str:
    """The timm model whose weights `model` starts from: itself, or a segmenter's encoder (its
    decoder and head have no pretrained weights)."""
    from kdray.tasks.segmenters import encoder_of

    return encoder_of(model) or model


def _tags(model: str) -> str:
    import timm

    tags = timm.list_pretrained(f"{model}.*")
    return "its tags: " + ", ".join(tags[:6]) if tags else "it has no pretrained tag"


def _no_weights(model: str, timm_model: str, value: str) -> str:
    import timm

    what = "ImageNet weights" if value.lower() == IMAGENET else f"weights tagged {value}"
    legacy = timm.list_pretrained(f"legacy_{timm_model}.*")
    hint = f"; the model legacy_{timm_model} has {legacy[0]}" if legacy else ""
    of = timm_model if timm_model == model else f"{timm_model} (the encoder of {model})"
    return (
        f"timm {timm.__version__} has no {what} for {of} ({_tags(timm_model)}{hint}); pick "
        f"another model or tag, give a weights file, or set `{model}: none` to start it from "
        "scratch"
    )


def sources(pretrained: Mapping[str, str], models: Iterable[str]) -> dict[str, WeightsSource]:
    """Each model's weights under a job's `pretrained` (its `default` entry for models it does
    not name); models that start from scratch are left out."""
    out = {}
    for model in sorted(models):
        named = model in pretrained
        value = pretrained[model] if named else pretrained.get(DEFAULT)
        where = f"pretrained.{model}" if named else f"pretrained ({value} for every model)"
        source = resolve(model, value, where)
        if source is not None:
            out[model] = source
    return out


# --- where it lies ------------------------------------------------------------------------------


def caches(setting: str | None = None) -> WeightsCaches:
    """The job's `weights_cache` (one folder laid out as both HF_HOME and TORCH_HOME), else
    $KDRAY_WEIGHTS_CACHE, else huggingface_hub's and torch's own variables (HF_HUB_CACHE, HF_HOME,
    TORCH_HOME, XDG_CACHE_HOME) and defaults, read now rather than when a library was imported."""
    root = setting or os.environ.get(CACHE_ENV)
    if root:
        home = Path(root).expanduser().resolve()
        return WeightsCaches(hub=home / "hub", torch_home=home)
    env = os.environ
    xdg = Path(env.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
    hub = env.get("HF_HUB_CACHE") or Path(env.get("HF_HOME") or xdg / "huggingface") / "hub"
    torch_home = env.get("TORCH_HOME") or xdg / "torch"
    return WeightsCaches(
        hub=Path(hub).expanduser().resolve(), torch_home=Path(torch_home).expanduser().resolve()
    )


def cache_problem(where: WeightsCaches, setting: str | None) -> str | None:
    """One line naming the setting when a file lies where a cache folder (or a folder above it)
    should be: nothing could be found in it, nor downloaded into it."""
    for folder in (where.hub, where.checkpoints):
        file = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        if file is None:
            continue
        if setting:
            named = "weights_cache"
        elif os.environ.get(CACHE_ENV):
            named = f"${CACHE_ENV}"
        else:
            named = "the weights cache ($HF_HUB_CACHE, $HF_HOME, $TORCH_HOME)"
        return f"{named}: {file} is a file, not a folder; point it at a folder for weights"
    return None


def url_file_name(url: str) -> str:
    """The name torch.hub gives a URL's download in its checkpoints folder."""
    return os.path.basename(urlparse(url).path)


def hub_repo(source: WeightsSource) -> tuple[str, str | None]:
    repo, _, revision = (source.hub_id or "").partition("@")
    return repo, revision or None


def hub_files(source: WeightsSource) -> tuple[str, ...]:
    """The files timm would load from the source's hub repo, in its order."""
    if not source.hub_file:
        return HUB_FILES
    if source.hub_file.endswith(".safetensors"):
        return (source.hub_file,)
    return (str(Path(source.hub_file).with_suffix(".safetensors")), source.hub_file)


def locate(source: WeightsSource, where: WeightsCaches) -> Path | None:
    """The source's file on this machine, or None; looks, never downloads."""
    if source.file:
        path = Path(source.file)
    elif source.hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, revision = hub_repo(source)
        for name in hub_files(source):
            found = try_to_load_from_cache(repo, name, cache_dir=where.hub, revision=revision)
            if isinstance(found, str):
                return Path(found)
        return None
    else:
        path = where.checkpoints / url_file_name(source.url or "")
    return path if path.is_file() else None


def expected_place(source: WeightsSource, where: WeightsCaches) -> Path:
    """Where `kdray weights` puts the source (a repo folder of the hub cache, or a file)."""
    if source.file:
        return Path(source.file)
    if source.hub_id:
        return where.hub / ("models--" + hub_repo(source)[0].replace("/", "--"))
    return where.checkpoints / url_file_name(source.url or "")


def sha256_file(path: Path) -> str:
    """The file's sha256, computed once per process for an unchanged file."""
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def find(source: WeightsSource, where: WeightsCaches) -> LocalWeights | None:
    path = locate(source, where)
    if path is None:
        return None
    return LocalWeights(source, path, sha256_file(path), path.stat().st_size)


def find_all(
    wanted: Mapping[str, WeightsSource], where: WeightsCaches
) -> tuple[dict[str, LocalWeights], list[WeightsSource]]:
    """The weights found, by model, and the sources missing here."""
    found, missing = {}, []
    for model, source in wanted.items():
        local = find(source, where)
        if local is None:
            missing.append(source)
        else:
            found[model] = local
    return found, missing


def missing_line(missing: list[WeightsSource], where: WeightsCaches, command: str) -> str:
    """One line for weights a run needs and this machine lacks."""
    names = ", ".join(f"{s.model} ({s.label})" for s in missing)
    return (
        f"pretrained weights missing here: {names} (not in the {where.describe()}); fetch them "
        f"on a machine with network with `{command}`, into a cache this machine reads (the "
        f"job's weights_cache, or ${CACHE_ENV})"
    )


def require(source: WeightsSource, where: WeightsCaches, sha256: str | None = None) -> LocalWeights:
    """The source's weights here, with the checksum a run was planned with (if given)."""
    local = find(source, where)
    if local is None:
        raise WeightsError(missing_line([source], where, "kdray weights JOB_FILE"))
    if sha256 and local.sha256 != sha256:
        raise WeightsError(
            f"pretrained weights of {source.model} ({source.label}) at {local.path} have sha256 "
            f"{local.sha256}, but the run was planned with {sha256}: restore those weights, "
            "or run the job under another name"
        )
    return local


# --- no downloads in a trial --------------------------------------------------------------------


def offline_env(where: WeightsCaches) -> dict[str, str]:
    """The environment of a process that must never download weights."""
    return {"HF_HUB_OFFLINE": "1", **where.env()}


def force_offline(where: WeightsCaches) -> None:
    """Make this process offline for huggingface_hub, with `where` as its caches. huggingface_hub
    reads its variables once, when imported; in a Ray worker that happened before the loop ran
    (unpickling the loop imports timm), so its module constants are set too."""
    os.environ.update(offline_env(where))
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
        constants.HF_HUB_CACHE = str(where.hub)
