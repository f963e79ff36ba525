"""timm's side of the throughput benchmark: one timm model trained with torch, timed.

Run by benchmarks/train_throughput_benchmark.py as a child process with a JSON spec (model,
batch, resolution, optimizer hyper-parameters, ...), it prints one JSON line of timings. It
imports torch and timm only, never JAX or TensorFlow: the two frameworks do not share a process
(nor GPU memory), and TensorFlow loaded before triton crashes the process. `--timm_python` of
the benchmark may point at an environment with torch and timm other than ours.

The step: uint8 NCHW (channels_last) images already on the device -> normalize -> model ->
cross-entropy under bfloat16 autocast -> backward -> [adaptive_clip_grad] -> optimizer step,
with the model (forward and backward) and the optimizer step compiled by `torch.compile`.
"""

import argparse
import json
import time
from collections.abc import Callable


def time_steps(step: Callable, sync: Callable, warmup: int, count: int) -> tuple[float, float]:
    """(seconds of the first step, compilation included; mean seconds per step after warm-up)."""
    start = time.perf_counter()
    sync(step())
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        sync(step())
    start = time.perf_counter()
    for _ in range(count):
        out = step()
    sync(out)
    return first, (time.perf_counter() - start) / count


def build_model(spec: dict):
    """timm.create_model(name, **kwargs), or a small model of the parity-test fixtures."""
    if spec["fixture"]:
        from tests.fixtures import export_timm_fixtures as fixtures

        return getattr(fixtures, spec["fixture"])(**spec["model_kwargs"])
    import timm

    return timm.create_model(spec["model"], **spec["model_kwargs"])


def train_loss_module(model, mean, std, label_smoothing: float):
    """images (uint8) -> normalize -> model -> cross-entropy, one module for torch.compile."""
    import torch

    class TrainLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.register_buffer("mean", 255 * torch.tensor(mean).view(1, 3, 1, 1))
            self.register_buffer("std", 255 * torch.tensor(std).view(1, 3, 1, 1))

        def forward(self, images, labels):
            logits = self.model((images.float() - self.mean) / self.std)
            return torch.nn.functional.cross_entropy(
                logits.float(), labels, label_smoothing=label_smoothing
            )

    return TrainLoss()


def build_optimizer(model, o: dict):
    """timm's optimizer factory (weight decay only on 2+-dim tensors, foreach kernels); returns
    (optimizer, gradient clip or None). The classifier weight is not clipped, as in ours."""
    from timm.optim import create_optimizer_v2
    from timm.utils import adaptive_clip_grad

    if o["name"] == "sgd":
        optimizer = create_optimizer_v2(
            model, "sgd", lr=o["lr"], weight_decay=o["weight_decay"], momentum=o["momentum"],
            nesterov=o["nesterov"], foreach=True,
        )
    else:
        optimizer = create_optimizer_v2(
            model, "adamw", lr=o["lr"], weight_decay=o["weight_decay"], betas=tuple(o["betas"]),
            eps=o["eps"], foreach=True,
        )
    if o.get("agc_clip") is None:
        return optimizer, None
    head = model.get_classifier().weight
    clipped = [p for p in model.parameters() if p is not head]
    return optimizer, lambda: adaptive_clip_grad(clipped, o["agc_clip"], o["agc_eps"])


def build_step(spec: dict) -> tuple[Callable, Callable]:
    """(step, sync) for one training step on a device-resident synthetic batch."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    model = build_model(spec).to(device, memory_format=torch.channels_last).train()
    loss_module = train_loss_module(
        model, spec["mean"], spec["std"], spec["label_smoothing"]
    ).to(device)
    optimizer, clip = build_optimizer(model, spec["optimizer"])

    def update():
        if clip is not None:
            clip()
        optimizer.step()

    if spec["compile"]:
        loss_module = torch.compile(loss_module)
        update = torch.compile(update)
    generator = torch.Generator(device).manual_seed(0)
    batch, px = spec["batch"], spec["resolution"]
    images = torch.randint(0, 256, (batch, 3, px, px), dtype=torch.uint8, device=device,
                           generator=generator).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, spec["num_classes"], (batch,), device=device, generator=generator)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=spec["bf16"]):
            loss = loss_module(images, labels)
        loss.backward()
        update()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def sync(_):
        if device == "cuda":
            torch.cuda.synchronize()

    return step, sync


def versions() -> dict:
    """torch's and timm's versions and the device, one string ('torch') and each apart."""
    import timm
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return dict(torch=f"torch {torch.__version__}, timm {timm.__version__} on {device}",
                torch_version=torch.__version__, timm_version=timm.__version__, device=device,
                cuda=torch.version.cuda)


def main(argv=None) -> None:
    """Prints one JSON line: first_step_s, step_time and the torch/timm versions and device."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("spec", help="JSON, as train_throughput_benchmark.timm_spec writes it")
    spec = json.loads(parser.parse_args(argv).spec)
    step, sync = build_step(spec)
    first, step_time = time_steps(step, sync, spec["warmup"], spec["steps"])
    print(json.dumps({"first_step_s": first, "step_time": step_time, **versions()}))


if __name__ == "__main__":
    main()
