"""What starting from ImageNet weights costs and does, for each model of jobs/mura_thesis.yaml.

    .venv/bin/python -m bench.weights      # about a minute on 2 cores; JSON on stdout

Nothing is downloaded: for each model the thesis job names, a file of ImageNet's shapes (random
values, the size of the real one) is put where `kdray weights` would put the real one (the hub
cache or the torch hub cache, in a temporary folder). Then, per model: the file's size, the
time to checksum it (first time in a process; `validate`, `run` and each trial do it once), the
time `kdray.tasks.models.create_model` takes from it (7 classes, 3 channels) against random
initialisation, and what timm does to the first convolution for 1-channel images (in_chans=1):
its shape before and after, and whether the result is the sum of the RGB kernels.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    import timm
    import torch
    from safetensors.torch import save_file

    from kdray.spec.load import load_job
    from kdray.tasks import weights as W
    from kdray.tasks.models import create_model

    torch.set_num_threads(2)
    job = load_job(REPO / "jobs/mura_thesis.yaml", ["data.root=/nowhere"])
    out = {"torch_threads": 2, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        where = W.caches(tmp)
        for model, source in job.weights_sources().items():
            print(f"[bench.weights] {model} ({source.tag})", file=sys.stderr, flush=True)
            state = {
                k: torch.randn(v.shape) if v.is_floating_point() else v
                for k, v in timm.create_model(model, pretrained=False).state_dict().items()
            }
            if source.hub_id:
                snapshot = where.hub / f"models--timm--{source.tag}" / "snapshots" / ("0" * 40)
                snapshot.mkdir(parents=True)
                save_file(state, snapshot / "model.safetensors")
                (snapshot.parents[1] / "refs").mkdir()
                (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
            else:
                where.checkpoints.mkdir(parents=True, exist_ok=True)
                torch.save(state, where.checkpoints / W.url_file_name(source.url))
            out["models"][model] = measure(model, source, where, state, create_model, W)
            del state
    json.dump(out, sys.stdout, indent=2)
    print()


def measure(model, source, where, state, create_model, W) -> dict:
    import timm
    import torch

    path = W.locate(source, where)
    started = time.perf_counter()
    sha = W.sha256_file(path)
    sha_s = time.perf_counter() - started
    local = W.LocalWeights(source, path, sha, path.stat().st_size)
    started = time.perf_counter()
    create_model(model, 7, 3, None)
    random_s = time.perf_counter() - started
    started = time.perf_counter()
    rgb = create_model(model, 7, 3, local)
    load_s = time.perf_counter() - started
    gray = create_model(model, 7, 1, local)
    cfg = timm.models.get_pretrained_cfg(source.tag)
    first = f"{cfg.first_conv}.weight"
    head = f"{cfg.classifier}.weight"
    summed = state[first].sum(1, keepdim=True)
    return {
        "tag": source.tag,
        "cache": "hub" if source.hub_id else "torch hub (by URL)",
        "file_mb": round(path.stat().st_size / 1e6, 1),
        "sha256_s": round(sha_s, 3),
        "create_from_weights_s": round(load_s, 3),
        "create_random_s": round(random_s, 3),
        "first_conv": cfg.first_conv,
        "first_conv_file": list(state[first].shape),
        "first_conv_in_chans_1": list(gray.state_dict()[first].shape),
        "in_chans_1_is_rgb_sum": bool(torch.allclose(gray.state_dict()[first], summed)),
        "in_chans_3_unchanged": bool(torch.equal(rgb.state_dict()[first], state[first])),
        "head": cfg.classifier,
        "head_file": list(state[head].shape),
        "head_loaded": list(rgb.state_dict()[head].shape),
    }


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the network
    main()
