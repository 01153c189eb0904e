"""The versions of everything that shapes a run's numbers, recorded with the experiment.

The same job, seed and code give other accuracies when a dependency changes what it computes
(an augmentation's random draws, a model's initialisation, a kernel), or on a CPU where PyTorch
picks other kernels: the quickstart's teacher tests at 0.720 with AVX-512 and 0.745 with AVX2
(`ONEDNN_MAX_CPU_ISA=AVX2`), same packages. So the experiment folder keeps
`versions.json`, written when the folder is created; `trials.parquet` carries the same in its
schema metadata (`kdray.versions`); and `kdray resume` (or running the same job again) warns,
package by package, when it runs with other versions than the experiment started with. Within
one `cpu.isa` CPUs still differ (AVX-512 with or without VNNI, BF16, FP16, AMX: oneDNN's and
MKL's kernels follow them), so the CPU model, its kernel-picking flags, oneDNN's own word on
its ISA and kernels, numpy's BLAS and core type and OpenCV's dispatched features are recorded
and compared too (`dispatch`).

The pretrained weights the runs start from are recorded there too, under `weights`: name (the
model), tag (or file), sha256 and size of each. Their checksums are part of the run ids, so other
weights are refused rather than warned about (kdray.store.experiment, kdray.grid.run).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import platform
import sys
import tempfile
from importlib import metadata
from pathlib import Path

VERSIONS_FILE = "versions.json"
PARQUET_KEY = b"kdray.versions"
WEIGHTS_KEY = "weights"

# distributions whose version can change a run's numbers (or its speed, for the cost columns)
PACKAGES = (
    "kdray",
    "torch",
    "torchvision",
    "timm",
    "albumentations",
    "albucore",
    "opencv-python-headless",
    "numpy",
    "pillow",
    "scikit-learn",
    "scipy",
    "ray",
    "pydicom",
    "pylibjpeg",
    "pylibjpeg-libjpeg",
    "pylibjpeg-openjpeg",
    "nvidia-cudnn-cu13",
    "nvidia-cudnn-cu12",
    "nvidia-cublas",
    "nvidia-cublas-cu12",
)


def current() -> dict[str, str]:
    """Python, each installed package of `PACKAGES`, the CUDA and cuDNN torch was built with
    (read without touching a GPU), and this machine's CPU and the vector ISA PyTorch uses on it.
    Taken where `kdray run` runs: on a cluster, trials may run on other machines."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    found.update(_cuda())
    return found


def _cuda() -> dict[str, str]:
    import torch  # `kdray run` imports it anyway; this creates no CUDA context

    found = {"torch.cuda": str(torch.version.cuda)}  # "None" for a CPU-only build
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if cudnn is not None:
        found["cudnn"] = str(cudnn)
    # the CPU's vector ISA picks PyTorch's (oneDNN's) kernels, hence the rounding: the same
    # packages train the quickstart to other accuracies on an AVX2 CPU than on an AVX-512 one
    found["cpu"] = _cpu_model()
    found["cpu.isa"] = torch.backends.cpu.get_cpu_capability()
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):
        found["cpu.isa"] += f" (ONEDNN_MAX_CPU_ISA={os.environ['ONEDNN_MAX_CPU_ISA']})"
    return {**found, **dispatch()}


# CPU flags that pick other kernels within one `cpu.isa` (ATen's AVX512 covers CPUs with and
# without VNNI, BF16, FP16 and AMX, which oneDNN and MKL use when present)
KERNEL_FLAGS = (
    "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
    "amx_tile", "amx_bf16", "amx_int8", "amx_fp16",
)  # fmt: skip
# variables that cap or fix a library's kernel choice
DISPATCH_ENV = (
    "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "OPENBLAS_CORETYPE",
    "OPENCV_CPU_DISABLE",
)  # fmt: skip
# recorded since issue 33: an experiment from before lacks them, which is no difference
MACHINE_KEYS = (
    "cpu.flags", "blas", "opencv.dispatch", "onednn.isa", "onednn.conv", "mkl.isa",
    *(f"env.{n}" for n in DISPATCH_ENV),
)  # fmt: skip


def dispatch() -> dict[str, str]:
    """What decides each library's CPU kernels here, to explain numbers that differ across
    CPUs: the kernel-picking CPU flags (MKL's dispatch follows them), oneDNN's ISA and kernels,
    numpy's BLAS and the core type it dispatched to, OpenCV's dispatched features (`*`), and
    any variable that caps a dispatch."""
    found = {"cpu.flags": " ".join(f for f in KERNEL_FLAGS if f in _cpu_flags()) or "-"}
    with contextlib.suppress(Exception):  # a report, never a reason to stop a run
        found["blas"] = _blas_libraries()
    with contextlib.suppress(Exception):
        found.update(onednn_dispatch())
    with contextlib.suppress(Exception):
        found.update(mkl_dispatch())
    try:
        import cv2

        found["opencv.dispatch"] = cv2.getCPUFeaturesLine()
    except Exception:
        pass
    found.update({f"env.{n}": os.environ[n] for n in DISPATCH_ENV if os.environ.get(n)})
    return found


@functools.cache
def onednn_dispatch() -> dict[str, str]:
    """oneDNN's own word on what it runs here, from its verbose lines: the ISA it dispatched to
    (`onednn.isa`) and the kernel each pass of a training 3x3 convolution took (`onednn.conv`,
    e.g. `forward_training jit:avx512_core, ...`). Two CPUs of one `cpu.isa` can differ here."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return {}
    lines = _stdout_of(_train_one_convolution).splitlines()
    found = {}
    for line in lines:
        if ",info,cpu,isa:" in line:
            found["onednn.isa"] = line.split(",info,cpu,isa:", 1)[1].strip()
    passes = [line.split(",")[6:8] for line in lines if ",exec,cpu,convolution," in line]
    if passes:
        found["onednn.conv"] = ", ".join(f"{step} {kernel}" for kernel, step in passes)
    return found


@functools.cache
def mkl_dispatch() -> dict[str, str]:
    """MKL's own word on the code path of torch's matrix products (a classifier head, say),
    from its verbose banner (`mkl.isa`, e.g. `Intel(R) Advanced Vector Extensions 2 (Intel(R)
    AVX2) enabled processors`). It follows the CPU's vendor as well as its flags, and
    `MKL_CBWR`: an Intel and an AMD CPU of one `cpu.isa` can differ here."""
    import torch

    if not torch.backends.mkl.is_available():
        return {}
    for line in _stdout_of(_one_matrix_product).splitlines():
        if line.startswith("MKL_VERBOSE") and " architecture " in line:
            return {"mkl.isa": line.split(" architecture ", 1)[1].split(", Lnx")[0].strip()}
    return {}


def _one_matrix_product() -> None:
    import torch

    with torch.backends.mkl.verbose(torch.backends.mkl.VERBOSE_ON):
        torch.mm(torch.ones(64, 64), torch.ones(64, 64))


def _train_one_convolution() -> None:
    import torch

    weight = torch.ones(16, 16, 3, 3, requires_grad=True)
    data = torch.ones(8, 16, 16, 16, requires_grad=True)
    with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        torch.nn.functional.conv2d(data, weight, padding=1).sum().backward()


def _stdout_of(call) -> str:
    """What `call` printed to file descriptor 1 from C (oneDNN prints there, through stdio),
    kept from the terminal; only the CLI's own thread runs this, before Ray starts."""
    import ctypes

    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 1)
        try:
            call()
            libc.fflush(None)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        captured.seek(0)
        return captured.read().decode(errors="replace")


def _blas_libraries() -> str:
    """Each BLAS that numpy, OpenCV and SciPy (albumentations') bring, with the core type it
    dispatched to, sorted: all three are loaded first, so the line never depends on what this
    process happened to import, or in which order (a resume would warn of a difference that
    is none)."""
    from threadpoolctl import threadpool_info

    for module in ("numpy", "cv2", "scipy.linalg"):
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    found = {
        f"{i.get('internal_api')} {i.get('version')} {i.get('architecture') or ''}".strip()
        for i in threadpool_info()
        if i.get("user_api") == "blas"
    }
    return "; ".join(sorted(found)) or "-"


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def record(root: Path, weights: list[dict] | None = None) -> dict:
    """Write `versions.json` into a new experiment folder, with the pretrained `weights`' records
    (`LocalWeights.record`) when there are any; an existing one is kept (it says what the
    experiment started with)."""
    path = root / VERSIONS_FILE
    if path.is_file():
        return recorded(root) or {}
    versions: dict = current()
    if weights:
        versions[WEIGHTS_KEY] = sorted(weights, key=lambda w: w["name"])
    path.write_text(json.dumps(versions, indent=2) + "\n")
    return versions


def recorded(root: Path) -> dict | None:
    """The versions the experiment started with; None for a folder made before kdray kept them."""
    path = root / VERSIONS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def recorded_weights(root: Path) -> list[dict]:
    """The pretrained weights the experiment started from (none recorded: [])."""
    return (recorded(root) or {}).get(WEIGHTS_KEY) or []


def recorded_checksums(root: Path) -> dict[str, str] | None:
    """The sha256 of each recorded pretrained model's weights, by model; None if none were
    recorded (a job without pretrained weights, or a folder from before they were recorded)."""
    weights = recorded_weights(root)
    return {w["name"]: w["sha256"] for w in weights} if weights else None


def weights_changes(root: Path, weights: list[dict]) -> list[str]:
    """`name: tag sha256 old -> new` for each model whose weights differ from those recorded
    (nothing recorded, as before kdray recorded weights: nothing to compare)."""
    old = {w["name"]: w for w in recorded_weights(root)}
    if not old:
        return []
    new = {w["name"]: w for w in weights}
    return [
        f"{name}: {_shown(old.get(name))} -> {_shown(new.get(name))}"
        for name in sorted(set(old) | set(new))
        if (old.get(name) or {}).get("sha256") != (new.get(name) or {}).get("sha256")
    ]


def _shown(weights: dict | None) -> str:
    if not weights:
        return "none"
    return f"{weights.get('tag') or weights.get('file')} sha256 {(weights['sha256'] or '')[:12]}"


def differences(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """`name old -> new` for every entry that differs (`-` where one side lacks it)."""
    return [
        f"{name} {old.get(name, '-')} -> {new.get(name, '-')}"
        for name in sorted(set(old) | set(new))
        if old.get(name) != new.get(name)
    ]


def resume_warning(root: Path, now: dict[str, str] | None = None) -> str | None:
    """One line when this environment differs from the one the experiment started with."""
    old = recorded(root)
    if old is None:
        return None
    old = {k: v for k, v in old.items() if k != WEIGHTS_KEY}  # checked, not warned about
    now = now if now is not None else current()
    now = {k: v for k, v in now.items() if k in old or k not in MACHINE_KEYS}
    changed = differences(old, now)
    if not changed:
        return None
    return (
        f"this environment differs from the one {root.name} started with ({VERSIONS_FILE}): "
        + ", ".join(changed)
        + "; runs continued here may not match the finished ones"
    )


def parquet_metadata(root: Path) -> dict[bytes, bytes]:
    """Schema metadata for the experiment's tables: its recorded versions, as JSON."""
    versions = recorded(root)
    return {PARQUET_KEY: json.dumps(versions).encode()} if versions else {}
