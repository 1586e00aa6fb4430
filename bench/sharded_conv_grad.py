"""Reproducer of the XLA partitioner bug that ``parallel.partitioning.training_rules`` works around: wrong kernel
gradients on meshes whose data, fsdp and tensor axes are all > 1.

The program: ``x -> conv 3x3 stride 2 (k1) -> square -> conv 3x3 (k2) -> mean squared error``, NHWC, batch sharded
over (data, fsdp), kernels sharded (None, None, <conv_in>, "tensor") as the model code shards them. For each kernel
spec and partitioner it prints the max abs error of the sharded gradient of k1 relative to the one-device gradient
(and, with --torch, of both against torch.autograd). Measured with jax 0.10.2 on 8 simulated CPU devices (batch 4,
16 x 8 positions, 16 channels), mesh 2 x 2 x 2: conv_in over fsdp 0.56 with Shardy (jax's default partitioner),
conv_in unsharded 3e-7; the meshes 1 x 4 x 2 and 4 x 1 x 2 are right either way. GSPMD gets this program right but
a ResNet block after the UNet's downsampler wrong (0.74), so switching partitioners is no fix. Run it after a jax
upgrade to see whether the workaround is still needed.

``--tpu`` also compiles the 2 x 2 x 2 gradient for a TPU v5p 2x2x2 slice (libtpu, no TPU needed) and prints the
collectives of the CPU and TPU programs side by side: a TPU program cannot be run here, so its structure is what can
be compared. Measured with jax 0.10.2 / libtpu 0.0.42.1: with conv_in over fsdp the CPU program (the wrong one) has
7 collectives, one of them the collective-permute that exchanges the cotangent between batch shards, and the TPU
program 5, with no collective-permute; with conv_in unsharded both have 3 and no permute. The TPU program does not
contain the exchange the CPU gradient goes wrong with; whether its gradient is right is unknown until it runs on a
TPU, and the workaround applies on every platform.

    python bench/sharded_conv_grad.py [--batch 4] [--size 16x8] [--torch] [--tpu]
"""

from __future__ import annotations

import argparse
import os
import re
import sys

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--batch", type=int, default=4)
parser.add_argument("--size", default="16x8", help="H x W of the input")
parser.add_argument("--channels", type=int, default=16)
parser.add_argument("--torch", action="store_true", help="also compare both gradients with torch.autograd")
parser.add_argument("--tpu", action="store_true", help="also compare the collectives of the CPU and TPU programs")
args = parser.parse_args()
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

if jax.device_count() < 8:
    sys.exit(f"needs 8 devices, found {jax.device_count()} (set XLA_FLAGS before jax starts)")

H, W = (int(v) for v in args.size.split("x"))
C = args.channels
rng = np.random.default_rng(0)
params = {"k1": (0.2 * rng.standard_normal((3, 3, C, C))).astype(np.float32),
          "k2": (0.2 * rng.standard_normal((3, 3, C, C))).astype(np.float32)}
x = rng.standard_normal((args.batch, H, W, C)).astype(np.float32)


def conv(h, k, stride):
    return jax.lax.conv_general_dilated(h, k, (stride, stride), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def forward(p, x):
    return conv(jnp.square(conv(x, p["k1"], 2)), p["k2"], 1)


y = rng.standard_normal(jax.eval_shape(forward, params, x).shape).astype(np.float32)
loss = lambda p, x, y: jnp.mean((forward(p, x) - y) ** 2)  # noqa: E731
one_device = jax.device_get(jax.jit(jax.grad(loss))(params, x, y))


def rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


torch_grads = None
if args.torch:
    import torch

    tp = {k: torch.tensor(v.transpose(3, 2, 0, 1).copy(), requires_grad=True) for k, v in params.items()}
    h = torch.nn.functional.conv2d(torch.tensor(x.transpose(0, 3, 1, 2).copy()), tp["k1"], stride=2, padding=1)
    out = torch.nn.functional.conv2d(h * h, tp["k2"], padding=1)
    ((out - torch.tensor(y.transpose(0, 3, 1, 2).copy())) ** 2).mean().backward()
    torch_grads = {k: v.grad.numpy().transpose(2, 3, 1, 0) for k, v in tp.items()}
    print(f"one device vs torch: k1 {rel(one_device['k1'], torch_grads['k1']):.1e}")

print(f"batch {args.batch}, {H} x {W} x {C}, jax {jax.__version__}; error of the sharded k1 gradient relative to "
      "one device")
for mesh_shape in ((2, 2, 2), (1, 4, 2), (4, 1, 2)):
    mesh = jax.make_mesh(mesh_shape, ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    batch = NamedSharding(mesh, P(("data", "fsdp")))
    for conv_in in ("fsdp", None):
        kernel = NamedSharding(mesh, P(None, None, conv_in, "tensor"))
        for shardy in (True, False):
            jax.config.update("jax_use_shardy_partitioner", shardy)
            with jax.set_mesh(mesh):
                grads = jax.jit(jax.grad(loss), in_shardings=({"k1": kernel, "k2": kernel}, batch, batch))(
                    params, x, y)
            line = (f"mesh data x fsdp x tensor = {'x'.join(map(str, mesh_shape))}  conv_in -> {str(conv_in):4s}  "
                    f"{'Shardy' if shardy else 'GSPMD ':6s}  k1 {rel(grads['k1'], one_device['k1']):.1e}  "
                    f"k2 {rel(grads['k2'], one_device['k2']):.1e}")
            if torch_grads is not None:
                line += f"  (vs torch k1 {rel(grads['k1'], torch_grads['k1']):.1e})"
            print(line, flush=True)


def collective_counts(devices, conv_in) -> dict[str, int]:
    """The collectives, by kind, of the k1 / k2 gradient program compiled for ``devices`` (8, as a 2 x 2 x 2 mesh)."""
    mesh = jax.sharding.Mesh(np.array(devices).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    kernel = NamedSharding(mesh, P(None, None, conv_in, "tensor"))
    batch = NamedSharding(mesh, P(("data", "fsdp")))
    abstract = lambda a, sharding: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding)  # noqa: E731
    text = jax.jit(jax.grad(loss)).lower({k: abstract(v, kernel) for k, v in params.items()}, abstract(x, batch),
                                         abstract(y, batch)).compile().as_text()
    kinds = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
    return {kind: len(re.findall(rf"= \S+ {kind}(?:-start)?\(", text)) for kind in kinds}


if args.tpu:
    from audioldm2_jax.plan.topology import parse_topology, tpu_devices

    jax.config.update("jax_use_shardy_partitioner", True)
    tpu = tpu_devices(parse_topology("v5p-16"))  # 8 chips, 2x2x2
    print("collectives of the 2 x 2 x 2 gradient program (Shardy), CPU vs TPU v5p 2x2x2:")
    for conv_in in ("fsdp", None):
        for name, devices in (("cpu", jax.devices()[:8]), ("tpu", tpu)):
            counts = {k: v for k, v in collective_counts(devices, conv_in).items() if v}
            print(f"  conv_in -> {str(conv_in):4s}  {name}: {sum(counts.values())} {counts}", flush=True)
