"""Plans as text: the per-chip report of one compiled step, and the ranking of a sweep."""

from __future__ import annotations

from audioldm2_jax.plan.topology import GiB
from audioldm2_jax.plan.sampling import SamplePlan
from audioldm2_jax.plan.training import StepPlan, SweepResult


def gib(value: float) -> str:
    """Bytes as GiB (MiB below one GiB)."""
    return f"{value / GiB:.2f} GiB" if abs(value) >= GiB else f"{value / 2**20:.1f} MiB"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def estimate_note(plan: StepPlan | SamplePlan) -> str:
    if not plan.topology.estimate:
        return "compiled by the TPU compiler (libtpu) for this topology"
    return ("ESTIMATE: no GPU compiler here; FLOPs and bytes are the CPU-compiled program's, its temporaries "
            "XLA:CPU's, with the GPU's memory, peak and bandwidth")


def step_report(plan: StepPlan) -> str:
    """The per-chip figures of one plan, as lines of text."""
    chip = plan.topology.chip
    per_chip = plan.batch_size / max(1, plan.mesh.get("data", 1) * plan.mesh.get("fsdp", 1))
    rows = [
        f"{plan.stage} training step on {plan.topology.describe()}",
        f"  {estimate_note(plan)}",
        f"  layout: {plan.layout}; global batch {plan.batch_size} ({per_chip:g} per batch shard); step option "
        f"{plan.options!r}; {plan.trainable_params / 1e6:.1f}M trainable parameters; {plan.compute_dtype} compute, "
        f"{plan.prng_impl} keys; compiled in {plan.compile_seconds:.0f} s",
        "  per chip:",
        f"    parameters + optimizer state + EMA  {gib(plan.state_bytes)}  (logical bytes of the train state's shard)",
        f"    frozen networks                     {gib(plan.frozen_bytes)}",
        f"    batch                               {gib(plan.batch_bytes)}",
        f"    inputs as laid out on the chip      {gib(plan.argument_bytes)}  (memory_analysis: arguments)",
        f"    temporaries                         {gib(plan.temp_bytes)}",
        f"    outputs not written in place        {gib(plan.output_bytes - plan.alias_bytes)}",
        f"    total                               {gib(plan.total_bytes)} of {gib(chip.hbm_bytes)}: "
        f"{'fits' if plan.fits else 'DOES NOT FIT'} ({plan.total_bytes / chip.hbm_bytes:.0%})",
        f"    FLOPs per step                      {plan.flops / 1e12:.4g} TFLOP",
        f"    HBM traffic per step                {plan.bytes_accessed / 1e9:.4g} GB",
        f"    roofline step time                  {ms(plan.step_seconds)} ({plan.bound}-bound: compute "
        f"{ms(plan.compute_seconds)} at {chip.peak_bf16_flops / 1e12:.0f} TFLOP/s, HBM "
        f"{ms(plan.memory_seconds)} at {chip.hbm_bytes_per_s / 1e9:.0f} GB/s; communication not counted)",
        f"    examples/s                          {plan.examples_per_second:.1f} (whole topology)",
        f"    utilisation bound (MFU)             {plan.utilisation:.0%}",
    ]
    return "\n".join(rows)


def sweep_report(result: SweepResult) -> str:
    """A markdown table of the layouts that fit, fastest first, then those that do not fit or did not compile."""
    lines = ["| rank | layout | total / chip | temporaries | step time | examples/s | MFU bound |",
             "|---|---|---|---|---|---|---|"]
    for rank, plan in enumerate(result.ranked(), 1):
        lines.append(f"| {rank} | {plan.layout} | {gib(plan.total_bytes)} | {gib(plan.temp_bytes)} | "
                     f"{ms(plan.step_seconds)} | {plan.examples_per_second:.1f} | {plan.utilisation:.0%} |")
    for plan in result.plans:
        if not plan.fits:
            lines.append(f"| - | {plan.layout} | {gib(plan.total_bytes)} (does not fit) | {gib(plan.temp_bytes)} | "
                         "| | |")
    for layout, error in result.failures:
        lines.append(f"| - | {layout} | not compiled: {error} | | | | |")
    if result.plans and result.plans[0].topology.estimate:
        lines.append("")
        lines.append(estimate_note(result.plans[0]))
    return "\n".join(lines)


def sample_report(plan: SamplePlan) -> str:
    """The per-chip figures of one sampling plan, as lines of text."""
    chip = plan.topology.chip
    axes = " x ".join(f"{k} {v}" for k, v in plan.mesh.items() if int(v) > 1) or "1 chip"
    rows = [
        f"sampling program on {plan.topology.describe()}",
        f"  {estimate_note(plan)}",
        f"  layout: {axes}; {plan.batch_size} prompts of {plan.seconds:g} s, {plan.steps} denoising steps, "
        f"{'classifier-free guidance (the UNet sees twice the rows)' if plan.guidance else 'no guidance'}; "
        f"{plan.compute_dtype} compute; compiled in {plan.compile_seconds:.0f} s (the program, and its decoders "
        "alone); the text encoders' program (once per batch) is not included",
        "  per chip:",
        f"    UNet, VAE decoder, vocoder params   {gib(plan.param_bytes)}  (logical bytes of their shard)",
        f"    inputs as laid out on the chip      {gib(plan.argument_bytes)}  (memory_analysis: arguments)",
        f"    temporaries                         {gib(plan.temp_bytes)}",
        f"    outputs not written in place        {gib(plan.output_bytes - plan.alias_bytes)}",
        f"    total                               {gib(plan.total_bytes)} of {gib(chip.hbm_bytes)}: "
        f"{'fits' if plan.fits else 'DOES NOT FIT'} ({plan.total_bytes / chip.hbm_bytes:.0%})",
        f"    FLOPs per denoising step            {plan.step_flops / 1e12:.4g} TFLOP",
        f"    FLOPs per batch                     {plan.flops / 1e12:.4g} TFLOP  ({plan.steps} steps + decoding; "
        "XLA counts a loop's body once: the other iterations are added)",
        f"    HBM traffic per batch               {plan.bytes_accessed / 1e9:.4g} GB",
        f"    roofline time per batch             {ms(plan.batch_seconds)} ({plan.bound}-bound: compute "
        f"{ms(plan.compute_seconds)} at {chip.peak_bf16_flops / 1e12:.0f} TFLOP/s, HBM "
        f"{ms(plan.memory_seconds)} at {chip.hbm_bytes_per_s / 1e9:.0f} GB/s; communication not counted)",
        f"    clips/s                             {plan.clips_per_second:.2f} (whole topology)",
    ]
    return "\n".join(rows)
