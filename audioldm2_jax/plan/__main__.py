"""Plans a training stage for a pod without the pod: compiles the stage's real training step for a topology on this
host and prints, per chip, memory against HBM, FLOPs, a roofline step time and the utilisation it allows.

    python -m audioldm2_jax.plan --config configs/audioldm2_large.py:ldm --topology v5p-128 --batch-size 512
    python -m audioldm2_jax.plan --config configs/audioldm2_base.py:ldm --topology v5e-256 --batch-size 512 \\
        --mesh data=64,fsdp=4 --remat full
    python -m audioldm2_jax.plan --config configs/scaling.py:ldm,preset=xl --topology v4-64 --sweep
    python -m audioldm2_jax.plan --config configs/audioldm2_base.py:ldm --topology 2xh100-8   # an estimate
    python -m audioldm2_jax.plan --config configs/audioldm2_large.py:ldm --topology v5e-8 --sample --batch-size 8 \
        --steps 200 --seconds 10.24 --guidance 3.5      # the pipeline's sampling program (no weights)

Topologies: docs/pods.md and :mod:`audioldm2_jax.plan.topology`. TPU programs come from libtpu's compiler
(``pip install "jax[tpu]"``; no TPU needed); GPU clusters are estimates from the CPU-compiled program.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import sys

from audioldm2_jax.plan import report
from audioldm2_jax.plan.topology import cpu_device_flag, parse_topology
from audioldm2_jax.plan.sampling import plan_sampling
from audioldm2_jax.plan.training import input_bytes, plan_step, sweep
from audioldm2_jax.train.config import ConfigError, load_config_file


def parse_pairs(text: str, what: str) -> dict[str, str]:
    """``"a=1,b=2"`` -> ``{"a": "1", "b": "2"}``; a field without ``=`` is an error naming ``what``."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"{what} {text!r}: {part!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


def parse_mesh(text: str) -> dict[str, int]:
    """``"data=8,fsdp=8"`` -> ``{"data": 8, "fsdp": 8, "tensor": 1}`` (missing axes are 1, one may be -1)."""
    pairs = parse_pairs(text, "--mesh")
    unknown = sorted(set(pairs) - {"data", "fsdp", "tensor"})
    if unknown:
        raise ValueError(f"--mesh {text!r}: axes {unknown} are not data, fsdp, tensor")
    return {axis: int(pairs.get(axis, 1)) for axis in ("data", "fsdp", "tensor")}


def apply_overrides(config, assignments: list[str]) -> None:
    """``--set a.b=value`` (Python literals, else strings) into the config."""
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep:
            raise ValueError(f"--set {assignment!r} is not key=value")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        node = config
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = parsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m audioldm2_jax.plan", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="configs/<file>.py[:<stage>,<options>], as train.py takes it")
    parser.add_argument("--topology", required=True, help="v5p-128, v5e-256, v4-64, v6e:4x4, 2xv5p-128, h100-8, ...")
    parser.add_argument("--num-slices", type=int, default=None, help="slices (GPU: nodes); overrides an NxNAME prefix")
    parser.add_argument("--batch-size", type=int, default=None, help="global batch (default: the config's)")
    parser.add_argument("--mesh", default=None, help="data=N,fsdp=N,tensor=N (default: the config's mesh)")
    parser.add_argument("--remat", default=None,
                        help="remat policy of every network that has one (models/layers.py:REMAT_POLICIES)")
    parser.add_argument("--micro-batches", type=int, default=None, help="gradient-accumulation micro-batches per step")
    parser.add_argument("--option", default=None, help="the stage's static step option (LDM: the LOA pooling rate; "
                                                       "default: the largest step)")
    parser.add_argument("--sweep", action="store_true", help="try meshes x remat policies x micro-batch counts and "
                                                             "rank those that fit by roofline throughput")
    parser.add_argument("--meshes", default=None, help="sweep: ';'-separated meshes (default: data, fsdp and their "
                                                       "even split, each with tensor 1, 2, 4)")
    parser.add_argument("--remats", default="none,full", help="sweep: remat policies")
    parser.add_argument("--micro-batch-counts", default="1", help="sweep: micro-batch counts")
    parser.add_argument("--inputs-only", action="store_true", help="no compile: only the bytes of the step's inputs "
                                                                   "(train state, frozen networks, batch) per chip")
    parser.add_argument("--sample", action="store_true", help="plan the pipeline of the config's networks: its "
                                                              "sampling program (denoising loop and decoders) for a "
                                                              "batch of --batch-size prompts")
    parser.add_argument("--steps", type=int, default=200, help="sample: sampler steps (default 200)")
    parser.add_argument("--seconds", type=float, default=None, help="sample: clip length (default: the config's "
                                                                   "data.clip_seconds)")
    parser.add_argument("--guidance", type=float, default=3.5, help="sample: guidance scale; above 1 classifier-free "
                                                                   "guidance doubles the UNet's batch (default 3.5)")
    parser.add_argument("--scheduler", default=None, help="sample: ddim, dpmsolver++ or pndm (default ddim, the "
                                                          "exported scheduler)")
    parser.add_argument("--text-tokens", type=int, default=None,
                        help="sample: the T5 stream's length the UNet attends to (the T5 tokenizer's "
                             "model_max_length; default the config's text.t5_max_length; published: 512)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    xla_flags = os.environ.get("XLA_FLAGS")
    try:
        topology = parse_topology(args.topology, args.num_slices)
        if topology.estimate:
            # the GPUs are stood in for by CPU devices, which XLA makes at start-up only; the flag is this
            # process's and is taken back below, so that processes started later keep their own device count
            os.environ["XLA_FLAGS"] = f"{xla_flags or ''} {cpu_device_flag(topology.num_chips)}"
        config = load_config_file(args.config)
        apply_overrides(config, args.set)
        option = ast.literal_eval(args.option) if args.option is not None else None
        if args.sample:
            if args.sweep or args.inputs_only or args.remat or args.micro_batches or args.option:
                raise ValueError("--sample plans the sampling program: --sweep, --inputs-only, --remat, "
                                 "--micro-batches and --option are the training step's")
            if args.steps < 1:
                raise ValueError(f"--steps {args.steps}: the sampler takes at least one step")
            plan, _, _ = plan_sampling(config, topology, batch_size=args.batch_size, steps=args.steps,
                                       seconds=args.seconds, guidance=args.guidance,
                                       mesh=parse_mesh(args.mesh) if args.mesh else None, scheduler=args.scheduler,
                                       text_tokens=args.text_tokens)
            print(report.sample_report(plan))
            figures = sample_figures_of(plan)
        elif args.inputs_only:
            figures = input_bytes(config, topology, batch_size=args.batch_size,
                                  mesh=parse_mesh(args.mesh) if args.mesh else None)
            print(f"step inputs per chip on {topology.describe()} (not compiled: no temporaries, FLOPs or step time): "
                  f"train state {report.gib(figures['state'])} ({figures['params'] / 1e6:.1f}M trainable "
                  f"parameters), frozen networks {report.gib(figures['frozen'])}, batch {report.gib(figures['batch'])}")
        elif args.sweep:
            meshes = [parse_mesh(m) for m in args.meshes.split(";")] if args.meshes else None

            def progress(plan, layout, error):
                what = f"{report.gib(plan.total_bytes)} per chip, {plan.examples_per_second:.1f} examples/s" \
                    if plan else f"failed: {error}"
                print(f"# {layout}: {what}", file=sys.stderr, flush=True)

            result = sweep(config, topology, batch_size=args.batch_size, meshes=meshes,
                           remats=[r for r in args.remats.split(",") if r],
                           micro_batches=[int(n) for n in args.micro_batch_counts.split(",") if n], option=option,
                           progress=progress)
            print(f"sweep on {topology.describe()}")
            print(report.sweep_report(result))
            figures = [figures_of(p) for p in result.ranked()]
        else:
            plan, _ = plan_step(config, topology, option=option, batch_size=args.batch_size,
                                mesh=parse_mesh(args.mesh) if args.mesh else None, remat=args.remat,
                                micro_batches=args.micro_batches)
            print(report.step_report(plan))
            figures = figures_of(plan)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if xla_flags is None:
            os.environ.pop("XLA_FLAGS", None)
        else:
            os.environ["XLA_FLAGS"] = xla_flags
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=1, default=str)
    return 0


def figures_of(plan) -> dict:
    """The plan's figures as JSON-ready values."""
    return dict(topology=plan.topology.name, chips=plan.topology.num_chips, estimate=plan.topology.estimate,
                stage=plan.stage, mesh=plan.mesh, batch_size=plan.batch_size, micro_batches=plan.micro_batches,
                remat=plan.remat, option=plan.options, compute_dtype=plan.compute_dtype, prng_impl=plan.prng_impl,
                state_bytes=plan.state_bytes, frozen_bytes=plan.frozen_bytes,
                argument_bytes=plan.argument_bytes, temp_bytes=plan.temp_bytes, total_bytes=plan.total_bytes,
                hbm_bytes=plan.topology.chip.hbm_bytes, fits=plan.fits, flops=plan.flops,
                bytes_accessed=plan.bytes_accessed, step_seconds=plan.step_seconds,
                examples_per_second=plan.examples_per_second, utilisation=plan.utilisation,
                compile_seconds=plan.compile_seconds)


def sample_figures_of(plan) -> dict:
    """A sampling plan's figures as JSON-ready values (per chip; FLOPs and bytes per generated batch)."""
    return dict(topology=plan.topology.name, chips=plan.topology.num_chips, estimate=plan.topology.estimate,
                program="sample", mesh=plan.mesh, batch_size=plan.batch_size, steps=plan.steps, seconds=plan.seconds,
                guidance=plan.guidance, compute_dtype=plan.compute_dtype,
                prng_impl=plan.prng_impl, param_bytes=plan.param_bytes, argument_bytes=plan.argument_bytes,
                temp_bytes=plan.temp_bytes, total_bytes=plan.total_bytes, hbm_bytes=plan.topology.chip.hbm_bytes,
                fits=plan.fits, program_flops=plan.program_flops, decode_flops=plan.decode_flops,
                step_flops=plan.step_flops, flops=plan.flops, bytes_accessed=plan.bytes_accessed,
                batch_seconds=plan.batch_seconds, clips_per_second=plan.clips_per_second,
                compile_seconds=plan.compile_seconds)


if __name__ == "__main__":
    sys.exit(main())
