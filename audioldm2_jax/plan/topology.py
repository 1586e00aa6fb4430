"""Accelerators and slices the planner compiles for: the chip table and topology names.

A topology is named as the cloud names it: ``v5p-128`` (TPU v4 / v5p count TensorCores, two per chip: 64 chips),
``v5e-256`` / ``v5litepod-256`` and ``v6e-256`` (one core per chip: 256 chips), or by its chip grid,
``v5p:4x4x4`` / ``v5e:16x16``; ``2xv5p-128`` is two such slices joined over the data-centre network. GPU clusters
are ``h100-8`` (one node of 8 GPUs) or ``4xh100-8`` (four of them). TPU devices come from libtpu's topology
description (``jax.experimental.topologies.get_topology_desc``), which needs no TPU: a program compiled for them is
the TPU compiler's own. GPU devices are CPU devices standing in for the GPUs: XLA:GPU cannot compile without a GPU,
so a GPU plan is an estimate from the CPU-compiled program (its FLOPs and bytes are the program's; its temporaries
are XLA:CPU's, not XLA:GPU's).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

import jax
from jax.experimental import topologies

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator chip: what the roofline and the memory check read."""

    name: str
    platform: str  # "tpu" or "gpu"
    hbm_bytes: float
    peak_bf16_flops: float  # dense bf16 FLOP/s
    hbm_bytes_per_s: float


# Published per-chip figures.
# TPU: Google Cloud's system-architecture pages (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e), "chip
#   specifications" tables: HBM capacity (GiB), HBM bandwidth, peak bf16 compute per chip.
# GPU: NVIDIA datasheets, SXM parts, dense (no sparsity) bf16 tensor-core peak: H100 SXM5 80 GB (3.35 TB/s,
#   989.4 TFLOP/s), H200 SXM 141 GB (4.8 TB/s, 989.4 TFLOP/s), A100 SXM4 80 GB (2.039 TB/s, 312 TFLOP/s).
CHIPS: dict[str, Chip] = {
    "v4": Chip("TPU v4", "tpu", 32 * GiB, 275e12, 1200e9),
    "v5e": Chip("TPU v5e", "tpu", 16 * GiB, 197e12, 819e9),
    "v5p": Chip("TPU v5p", "tpu", 95 * GiB, 459e12, 2765e9),
    "v6e": Chip("TPU v6e", "tpu", 32 * GiB, 918e12, 1640e9),
    "h100": Chip("NVIDIA H100 SXM 80GB", "gpu", 80e9, 989.4e12, 3.35e12),
    "h200": Chip("NVIDIA H200 SXM 141GB", "gpu", 141e9, 989.4e12, 4.8e12),
    "a100": Chip("NVIDIA A100 SXM 80GB", "gpu", 80e9, 312e12, 2.039e12),
}
# Names the cloud also uses for the same chips.
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6litepod": "v6e"}
# Generations whose accelerator-type number counts TensorCores (two per chip, run as one "megacore" device).
CORES_PER_CHIP = {"v4": 2, "v5p": 2}
# The chip grid of a slice of N chips, as the cloud lays them out (3-D torus for v4 / v5p, 2-D for v5e / v6e).
GRID_3D = {1: (1, 1, 1), 2: (1, 1, 2), 4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
           128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16),
           4096: (16, 16, 16)}
GRID_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}

NAME_HELP = ("a topology is <generation>-<N> (v4-64, v5p-128: N TensorCores, two per chip; v5e-256, v6e-256: N "
             "chips; h100-8: one node of N GPUs), <generation>:<grid> (v5p:4x4x4, v5e:16x16), optionally prefixed "
             "by a slice / node count (2xv5p-128); generations: " + ", ".join(CHIPS))


@dataclasses.dataclass(frozen=True)
class Topology:
    """``num_slices`` slices (GPU: nodes) of ``grid`` chips each."""

    name: str
    generation: str
    grid: tuple[int, ...]
    num_slices: int = 1

    @property
    def chip(self) -> Chip:
        return CHIPS[self.generation]

    @property
    def chips_per_slice(self) -> int:
        return math.prod(self.grid)

    @property
    def num_chips(self) -> int:
        return self.chips_per_slice * self.num_slices

    @property
    def estimate(self) -> bool:
        """True where no compiler for the chip is available here (GPUs): the plan is an estimate."""
        return self.chip.platform != "tpu"

    def describe(self) -> str:
        chip = self.chip
        if chip.platform == "gpu":
            where = f"{self.num_slices} node{'s' if self.num_slices > 1 else ''} of {self.grid[0]} GPUs"
        else:
            grid = "x".join(map(str, self.grid))
            where = f"{self.num_slices} slices of {grid}" if self.num_slices > 1 else grid
        return (f"{self.name} ({self.num_chips} chips, {where}; {chip.name}: {chip.hbm_bytes / GiB:.1f} GiB HBM, "
                f"{chip.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16, {chip.hbm_bytes_per_s / 1e9:.0f} GB/s)")

    def devices(self) -> list:
        """The devices a mesh of this topology is made of: libtpu's abstract TPU devices, or (GPU estimates) the
        first ``num_chips`` CPU devices, of which the host must have enough (``XLA_FLAGS``
        ``--xla_force_host_platform_device_count``, which :func:`cpu_device_flag` returns, set before jax starts)."""
        if self.chip.platform == "tpu":
            return tpu_devices(self)
        cpus = jax.devices("cpu")
        if len(cpus) < self.num_chips:
            raise ValueError(f"{self.name}: a GPU estimate compiles on {self.num_chips} CPU devices, this process has "
                             f"{len(cpus)}; start it with XLA_FLAGS={cpu_device_flag(self.num_chips)} (python -m "
                             "audioldm2_jax.plan sets it itself)")
        return cpus[:self.num_chips]


def cpu_device_flag(count: int) -> str:
    return f"--xla_force_host_platform_device_count={int(count)}"


def parse_topology(name: str, num_slices: int | None = None) -> Topology:
    """``"v5p-128"``, ``"v5e:2x2"``, ``"2xv6e-256"``, ``"h100-8"`` -> :class:`Topology`; ``num_slices`` overrides a
    prefix. Raises a ValueError naming the problem (unknown generation, a chip count no slice has, a grid of the
    wrong rank)."""
    text = str(name).strip().lower()
    match = re.fullmatch(r"(?:(\d+)x)?([a-z0-9]+?)(?:-(\d+)|:(\d+(?:x\d+)*))", text)
    if not match:
        raise ValueError(f"topology {name!r} is not understood: {NAME_HELP}")
    slices_text, generation, count_text, grid_text = match.groups()
    generation = ALIASES.get(generation, generation)
    if generation not in CHIPS:
        raise ValueError(f"topology {name!r}: unknown accelerator {generation!r}; {NAME_HELP}")
    slices = int(num_slices if num_slices is not None else (slices_text or 1))
    if slices < 1:
        raise ValueError(f"topology {name!r}: the slice count must be at least 1, got {slices}")
    chip = CHIPS[generation]
    rank = 3 if generation in ("v4", "v5p") else 2
    if grid_text:
        grid = tuple(int(v) for v in grid_text.split("x"))
        if chip.platform == "gpu":
            raise ValueError(f"topology {name!r}: GPU clusters are named <gpu>-<gpus per node>, e.g. 4xh100-8")
        if len(grid) != rank or min(grid) < 1:
            raise ValueError(f"topology {name!r}: a {generation} grid has {rank} positive sizes, e.g. "
                             f"{generation}:{'x'.join(['2'] * rank)}")
        return Topology(str(name), generation, grid, slices)
    count = int(count_text)
    if chip.platform == "gpu":
        if count < 1:
            raise ValueError(f"topology {name!r}: a node needs at least one GPU")
        return Topology(str(name), generation, (count,), slices)
    cores = CORES_PER_CHIP.get(generation, 1)
    table = GRID_3D if rank == 3 else GRID_2D
    if count % cores or count // cores not in table:
        valid = ", ".join(f"{generation}-{n * cores}" for n in table)
        raise ValueError(f"topology {name!r}: no {generation} slice has {count} "
                         f"{'TensorCores' if cores > 1 else 'chips'}; slices are {valid}")
    return Topology(str(name), generation, table[count // cores], slices)


def tpu_devices(topology: Topology) -> list:
    """libtpu's devices of a TPU topology (no TPU needed). The topology's processes hold up to 2 x 2 chips each."""
    # libtpu takes a machine-wide lock file unless told that several processes may load it: planning processes
    # (and test workers) on one host would otherwise fail one another, or a training job's libtpu on a TPU VM.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    grid = topology.grid + (1,) * (3 - len(topology.grid))
    host = tuple(min(2, g) for g in grid[:2]) + (1,)
    return list(topologies.get_topology_desc(
        platform="tpu", topology_name=f"{topology.generation}:{'x'.join(map(str, topology.grid))}",
        # v4 chips run their two TensorCores as one device only in "megacore" mode (v5p does by default)
        chip_config_name="megacore" if topology.generation == "v4" else "default",
        chips_per_host_bounds=host, num_slices=topology.num_slices).devices)
