"""ConvNeXt's 7x7 depthwise convolution on one TPU v4 chip, by the TPU compiler's own cycle
estimates (libtpu, compiled ahead of time on any machine; training/compiled_cost.py), in three
formulations side by side, forward and forward + backward:

- `depthwise`: the model's conv (feature_group_count = channels);
- `block-diagonal g`: a grouped conv whose kernel is block-diagonal in groups of g channels (the
  same function, g x the FLOPs, denser work for the matrix units);
- `shifted adds`: 49 shifted multiply-adds on the vector units.

    python -m benchmarks.tpu_depthwise            # ConvNeXt-T's first stage at 64 per chip
"""

import argparse

import jax
import jax.numpy as jnp

from modeling import hardware
from training import hlo_cost, tpu_slices

KERNEL = 7
V4_CLOCK_HZ = hardware.accelerator("tpu_v4").clock_hz


def depthwise(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", feature_group_count=x.shape[-1],
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def block_diagonal(group: int):
    def conv(x, w):
        channels = x.shape[-1]
        blocks = w.reshape(KERNEL, KERNEL, channels // group, 1, group)  # (.., groups, 1, out)
        dense = blocks * jnp.eye(group, dtype=w.dtype)  # (.., groups, in, out): w[out] if in=out
        dense = dense.transpose(0, 1, 3, 2, 4).reshape(KERNEL, KERNEL, group, channels)
        return jax.lax.conv_general_dilated(x, dense, (1, 1), "SAME",
                                            feature_group_count=channels // group,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return conv


def shifted_adds(x, w):
    pad, size = KERNEL // 2, x.shape[1]
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))).astype(jnp.float32)
    out = sum(padded[:, i:i + size, j:j + size, :] * w[i, j, 0].astype(jnp.float32)
              for i in range(KERNEL) for j in range(KERNEL))
    return out.astype(x.dtype)


def with_backward(conv):
    loss = lambda x, w: jnp.sum(conv(x, w).astype(jnp.float32) ** 2)
    return jax.grad(loss, argnums=(0, 1))


def predicted_us(device, fn, *shapes) -> float:
    compiled = tpu_slices.compile_on(device, fn, *shapes)
    return hlo_cost.estimated_cycles(compiled.as_text()) / V4_CLOCK_HZ * 1e6


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=56)
    parser.add_argument("--channels", type=int, default=96)
    args = parser.parse_args(argv)
    jax.config.update("jax_platforms", "cpu")
    device = tpu_slices.slice_devices(tpu_slices.parse_slice("v4:2x2x1"))[0]
    x = jax.ShapeDtypeStruct((args.batch, args.size, args.size, args.channels), jnp.bfloat16)
    w = jax.ShapeDtypeStruct((KERNEL, KERNEL, 1, args.channels), jnp.bfloat16)
    variants = {"depthwise": depthwise, "block-diagonal 8": block_diagonal(8),
                "block-diagonal 32": block_diagonal(32), "shifted adds": shifted_adds}
    base = None
    print(f"{'formulation':<20}{'forward':>12}{'fwd + bwd':>12}{'ratio':>8}")
    for name, conv in variants.items():
        forward = predicted_us(device, conv, x, w)
        both = predicted_us(device, with_backward(conv), x, w)
        base = base or both
        print(f"{name:<20}{forward:>9.0f} us{both:>9.0f} us{both / base:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
