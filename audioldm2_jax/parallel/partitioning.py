"""Logical axis names, their default mapping onto mesh axes, and sharding helpers.

Model code names only *logical* axes (``"embed"``, ``"mlp"``, ``"conv_out"``, ...). The rules below are the one
place where logical names meet the mesh axes ``data``, ``fsdp`` and ``tensor``; configs may override them.

Parameter axes
    embed       model width on the input side of a projection
    mlp         feed-forward hidden width
    heads       flattened ``heads * head_dim`` of attention projections
    vocab       token vocabulary
    conv_in     input channels of a convolution
    conv_out    output channels of a convolution
    conv_kh, conv_kw (conv_kd)  spatial extent of a convolution kernel (1-D kernels use conv_kw)
    norm        scale / bias of a normalisation layer
    position    learned position tables

Activation axes
    act_batch, act_length, act_embed, act_heads, act_mlp, act_height, act_width, act_channels
"""

from __future__ import annotations

from typing import Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import NamedSharding, PartitionSpec

LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]

DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # parameters: fully sharded over fsdp, tensor-parallel over the wide dimension
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("conv_in", "fsdp"),
    ("conv_out", "tensor"),
    ("conv_kd", None),
    ("conv_kh", None),
    ("conv_kw", None),
    ("norm", None),
    ("position", None),
    # activations: the batch is split over every data-parallel axis
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_height", None),
    ("act_width", None),
    ("act_channels", None),
)


def training_rules(rules: LogicalRules, mesh: jax.sharding.Mesh) -> tuple:
    """The logical rules of a program that differentiates through the models on ``mesh``: ``rules``, except that
    convolution kernels keep their input channels unsharded (``conv_in`` -> None) on meshes whose ``data``,
    ``fsdp`` and ``tensor`` axes are all larger than 1.

    Why: on such meshes XLA's SPMD partitioner (jax 0.10.2; Shardy and GSPMD alike) returns wrong kernel gradients
    for a strided convolution followed by a nonlinearity and a second convolution when both kernels are sharded
    over fsdp (input channels) and tensor (output channels), at small per-device activations (a few examples of
    up to ~16 x 8 positions per shard): the backward pass permutes the cotangent between the data and fsdp shards
    of the batch but not the activations it is multiplied with. The loss is right, the gradients are up to 100 %
    off. With ``conv_in`` unsharded the same programs match one device to float32 rounding. Reproducer and
    measurements: ``bench/sharded_conv_grad.py``, docs/training.md ("Meshes with data, fsdp and tensor").
    Inference programs (no gradients) keep ``rules`` as they are.
    """
    if all(mesh.shape.get(axis, 1) > 1 for axis in ("data", "fsdp", "tensor")):
        return tuple((name, None if name == "conv_in" else axes) for name, axes in rules)
    return tuple(rules)


def batch_axes(rules: LogicalRules, mesh: jax.sharding.Mesh | Mapping[str, int]) -> tuple[str, ...]:
    """The mesh axes that carry the batch: those the rules map ``act_batch`` to, in rule order, kept where
    ``mesh`` (a Mesh or an ``{axis: size}`` dict) has them. The one place that answers this question for the
    trainer, the data loader, config validation and the pipeline, so that overriding the rule moves them all."""
    names = mesh.shape if isinstance(mesh, jax.sharding.Mesh) else mesh
    for name, target in rules:
        if name == "act_batch":
            targets = (target,) if isinstance(target, str) else tuple(target or ())
            return tuple(axis for axis in targets if axis in names)
    return ()


def batch_size_divisor(rules: LogicalRules, mesh: jax.sharding.Mesh | Mapping[str, int]) -> int:
    """How many shards the batch is split into: the product of the sizes of :func:`batch_axes`. A global batch
    (and each micro-batch of it) must be a multiple of it."""
    sizes = mesh.shape if isinstance(mesh, jax.sharding.Mesh) else mesh
    return int(np.prod([int(sizes[axis]) for axis in batch_axes(rules, mesh)], dtype=np.int64))


def batch_sharding(mesh: jax.sharding.Mesh, rules: LogicalRules) -> NamedSharding:
    """The sharding of a batch-leading array ``[B, ...]``: ``B`` split over :func:`batch_axes`, the rest
    replicated. As a prefix it fits every array of a batch, whatever its rank."""
    axes = batch_axes(rules, mesh)
    return NamedSharding(mesh, PartitionSpec(axes[0] if len(axes) == 1 else axes or None))


def process_batch_rows(sharding: NamedSharding, global_batch_size: int,
                       devices: Sequence[jax.Device] | None = None) -> tuple[int, int]:
    """``(first, stop)``: the contiguous rows of every global batch that ``devices`` hold under ``sharding``
    (default: this process's devices), i.e. what one process must load. Processes whose devices share batch
    shards (the batch replicated over some mesh axis) load the same rows.

    Raises a ValueError when the rows are not contiguous (a mesh laid out so that one process holds
    non-adjacent shards of the batch)."""
    devices = set(sharding.addressable_devices if devices is None else devices)
    index_map = sharding.devices_indices_map((int(global_batch_size),))
    spans = sorted({(s.start or 0, global_batch_size if s.stop is None else s.stop)
                    for device, (s,) in index_map.items() if device in devices})
    if not spans:
        raise ValueError(f"none of the devices {sorted(d.id for d in devices)} is in the batch sharding's mesh")
    for (_, stop), (start, _) in zip(spans, spans[1:]):
        if start != stop:
            raise ValueError(f"the batch rows of devices {sorted(d.id for d in devices)} under {sharding.spec} are "
                             f"not contiguous ({spans}); lay the mesh out so that each process holds adjacent "
                             "batch shards")
    return spans[0][0], spans[-1][1]


def make_mesh(shape: dict[str, int] | Sequence[int], names: Sequence[str] = ("data", "fsdp", "tensor"),
              devices=None) -> jax.sharding.Mesh:
    """A mesh with ``Auto`` axes (Linen's logical constraints need them; ``Explicit`` is jax's default now).

    ``shape`` is ``{"data": 2, "fsdp": 2, "tensor": 2}`` or a sequence matching ``names``; one entry may be -1
    to take the remaining devices.
    """
    if isinstance(shape, dict):
        names = tuple(shape)
        shape = tuple(shape.values())
    shape = list(shape)
    devices = list(jax.devices() if devices is None else devices)
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one axis may be -1")
    if -1 in shape:
        rest = int(np.prod([s for s in shape if s != -1]))
        if len(devices) % rest:
            raise ValueError(f"mesh shape {shape} does not divide the {len(devices)} devices")
        shape[shape.index(-1)] = len(devices) // rest
    if int(np.prod(shape)) != len(devices):
        raise ValueError(f"mesh shape {dict(zip(names, shape))} needs {int(np.prod(shape))} devices, "
                         f"{len(devices)} are available")
    axis_types = (jax.sharding.AxisType.Auto,) * len(shape)
    if slice_count(devices) > 1:
        return jax.sharding.Mesh(multi_slice_device_array(shape, devices), tuple(names), axis_types=axis_types)
    return jax.make_mesh(tuple(shape), tuple(names), axis_types=axis_types, devices=devices)


def slice_count(devices) -> int:
    """How many TPU slices ``devices`` span (multi-slice pods, joined over the data-centre network); 1 for other
    platforms, whatever their ``slice_index`` says."""
    return len({getattr(device, "slice_index", 0) for device in devices if device.platform == "tpu"}) or 1


def multi_slice_device_array(shape: Sequence[int], devices) -> np.ndarray:
    """``devices`` of several slices as an array of ``shape``, the slices along the first axis whose size they divide
    (``data`` in the usual order): only that axis crosses the slow network between slices, the others stay inside a
    slice's torus. ``jax.make_mesh`` lays out one slice only."""
    slices = slice_count(devices)
    axis = next((i for i, size in enumerate(shape) if size % slices == 0), None)
    if axis is None:
        raise ValueError(f"mesh shape {tuple(shape)}: no axis is a multiple of the {slices} slices the devices span")
    within, across = list(shape), [1] * len(shape)
    within[axis], across[axis] = shape[axis] // slices, slices
    return mesh_utils.create_hybrid_device_mesh(within, across, devices=devices)


def with_axes(init: nn.initializers.Initializer, axes: tuple[str | None, ...]):
    """An initializer whose parameter carries logical axis names (``nn.with_logical_partitioning``)."""
    return nn.with_logical_partitioning(init, axes)


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
    """Pins an activation's sharding by logical names; a no-op outside a mesh / rules context."""
    return nn.with_logical_constraint(x, axes)


def fit_spec_to_shape(spec: PartitionSpec, shape: tuple[int, ...], mesh: jax.sharding.Mesh) -> PartitionSpec:
    """Drops mesh axes from dimensions they do not divide (small convs, odd vocabularies stay replicated)."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        if axes is None:
            fitted.append(None)
            continue
        names = (axes,) if isinstance(axes, str) else tuple(axes)
        kept = []
        size = 1
        for name in names:
            if dim % (size * mesh.shape[name]) == 0:
                kept.append(name)
                size *= mesh.shape[name]
        fitted.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*fitted)


def logical_to_shardings(abstract_tree, mesh: jax.sharding.Mesh, rules: LogicalRules):
    """NamedShardings for a tree of (possibly ``LogicallyPartitioned``) abstract arrays.

    Leaves without logical names are replicated. Mesh axes that do not divide a dimension are dropped.
    """
    logical_specs = nn.get_partition_spec(abstract_tree)
    mesh_specs = nn.logical_to_mesh(logical_specs, rules)
    unboxed = nn.unbox(abstract_tree)

    def leaf_sharding(spec, leaf):
        spec = spec if isinstance(spec, PartitionSpec) else PartitionSpec()
        return NamedSharding(mesh, fit_spec_to_shape(spec, leaf.shape, mesh))

    return jax.tree.map(leaf_sharding, mesh_specs, unboxed, is_leaf=lambda s: isinstance(s, PartitionSpec))


def sharded_init(init_fn, mesh: jax.sharding.Mesh, rules: LogicalRules, *args):
    """Runs ``init_fn(*args)`` under jit so that every parameter is born sharded, never whole on one device.

    Returns ``(params, shardings)`` with plain (unboxed) arrays.
    """
    with nn.logical_axis_rules(rules):
        # Shapes first, outside the mesh: boxed parameters would otherwise try to constrain abstract values.
        abstract = jax.eval_shape(init_fn, *args)
        shardings = logical_to_shardings(abstract, mesh, rules)
        with jax.set_mesh(mesh):
            params = jax.jit(lambda *a: nn.unbox(init_fn(*a)), out_shardings=shardings)(*args)
    return params, shardings


def place(tree, shardings):
    """Moves host arrays onto the mesh (``jax.device_put`` leaf by leaf with matching shardings)."""
    return jax.tree.map(lambda x, s: jax.device_put(np.asarray(x) if not isinstance(x, jax.Array) else x, s),
                        tree, shardings)
