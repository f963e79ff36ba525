"""Loop overhead: steady-state step time of train.py over a bare jitted step, side by side.

train.py's step time includes everything the loop does around the step (input pipeline,
host-to-device transfer, metrics, async checkpoints, NaN checks); the bare loop calls the same
jitted step on one device-resident batch. Both use the same model, batch and optimizer.

    python -m benchmarks.loop_overhead_benchmark                      # tiny NFNet, CPU-sized
    python -m benchmarks.loop_overhead_benchmark --model=nfnet_F0 --batch=256 --resolution=192

Prints both step times and their ratio (target: <= 1.05).
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import train
from configs import quickstart
from imagedata import data_config
from training import optim, steps


def benchmark_config(args):
    c = quickstart.get_config()
    c.model.name = args.model
    c.compute_dtype = args.dtype
    c.data = data_config.default_data_config("synthetic")
    c.data.train_resolution = c.data.eval_resolution = args.resolution
    c.data.num_classes = 1000
    c.data.synthetic.image_size = args.resolution
    c.data.synthetic.eval_examples = args.batch
    c.global_batch_size = c.eval_batch_size = args.batch
    c.total_steps = args.steps
    c.optimizer.warmup_steps = 1
    c.log_every_steps = args.log_every
    c.eval_every_steps = 0
    c.checkpoint_every_steps = args.checkpoint_every
    return c


def train_py_step_time(config) -> float:
    """Median step time over train.py's logged intervals, the first (compilation) dropped."""
    with tempfile.TemporaryDirectory() as workdir:
        train.train_and_evaluate(config, workdir)
        lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    times = [json.loads(line)["step_time"] for line in lines][1:-1]  # last one evaluates
    return float(np.median(times))


def bare_step_time(config, steps_to_time: int) -> float:
    model = train.create_model(config)
    schedule = optim.learning_rate_schedule(0.1, config.total_steps, 1)
    optimizer = optim.create_optimizer(config.optimizer, schedule)
    r = config.data.train_resolution
    state = jax.jit(lambda k: steps.create_state(model, optimizer, k, (r, r, 3), False))(
        jax.random.key(0)
    )
    normalize = lambda x: data_config.normalize(x, config.data, jnp.dtype(config.compute_dtype))
    step = jax.jit(
        steps.make_train_step(model, optimizer, schedule, seed=0,
                              num_classes=config.data.num_classes, normalize=normalize),
        donate_argnums=0,
    )
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.integers(0, 256, (config.global_batch_size, r, r, 3), np.uint8)),
        "label": jnp.asarray(rng.integers(0, config.data.num_classes, config.global_batch_size)),
    }
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps_to_time):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / steps_to_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="nfnet_tiny")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--log_every", type=int, default=20)
    parser.add_argument("--checkpoint_every", type=int, default=40)
    args = parser.parse_args()
    config = benchmark_config(args)
    loop = train_py_step_time(config)
    bare = bare_step_time(config, steps_to_time=3 * args.log_every)
    print(f"device          {jax.devices()[0].device_kind} x {jax.device_count()}")
    print(f"model           {args.model}, batch {args.batch}, {args.resolution} px, {args.dtype}")
    print(f"train.py step   {loop * 1e3:.2f} ms (median of logged intervals; "
          f"checkpoint every {args.checkpoint_every}, log every {args.log_every})")
    print(f"bare step       {bare * 1e3:.2f} ms")
    print(f"ratio           {loop / bare:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
