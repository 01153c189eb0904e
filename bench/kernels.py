"""`python -m bench.kernels [--model seresnet18] [--size 24]`: where two CPUs' numbers part.

Prints one JSON object: this machine's kernel-picking record (`kdray.store.versions.current()`:
CPU, ISA, flags, oneDNN's ISA and convolution kernels, BLAS, OpenCV) and, for one training step
of the quickstart's teacher from a fixed seed on fixed data, a digest of every module's output
and of every parameter's gradient, in order. Run it on two machines (same packages) and compare:
the first module whose digest differs is where their kernels part (a convolution: compare the
two records' `onednn.*` lines; a norm or activation: ATen's `cpu.isa`). Nothing is downloaded;
one thread, so the thread count is not what differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json

import torch


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().contiguous().numpy().tobytes()).hexdigest()[:12]


def one_step(model_name: str, size: int) -> dict:
    """Digests of each module's output and each gradient after one SGD step's backward."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=5, in_chans=1)
    images = torch.linspace(-1, 1, 32 * size * size).reshape(32, 1, size, size).sin()
    labels = torch.arange(32) % 5
    outputs: dict[str, str] = {}

    def keep(name: str):
        def hook(_module, _inputs, output) -> None:  # None: the output is left as it is
            outputs.setdefault(name, digest(output))

        return hook

    hooks = [
        module.register_forward_hook(keep(name))
        for name, module in model.named_modules()
        if name and not list(module.children())  # leaves: convolutions, norms, activations
    ]
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    for hook in hooks:
        hook.remove()
    grads = {name: digest(p.grad) for name, p in model.named_parameters() if p.grad is not None}
    return {"loss": loss.item(), "outputs": outputs, "grads": grads}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="seresnet18", help="a timm model (the quickstart's)")
    parser.add_argument("--size", type=int, default=24, help="image side in pixels")
    args = parser.parse_args(argv)
    from kdray.store.versions import current

    torch.set_num_threads(1)
    print(json.dumps({"machine": current(), **one_step(args.model, args.size)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
