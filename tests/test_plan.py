"""The pod planner (``python -m audioldm2_jax.plan``): the trainer's step compiled by the TPU compiler (libtpu) for
abstract TPU devices on this CPU host.

Compiling a UNet for TPU is slow here: XLA's TPU compiler spends about two minutes on the step of a one-level micro
UNet (two shared cores; the micro LDM stage's step, with its VAE, AudioMAE and T5, takes four), against seconds for
transformer blocks. So these tests plan a stage of their own, :class:`RegressionStage` (a two-layer GPT-2 predicting
the next log-mel frame: no frozen networks), through the same trainer code path the planner runs for every stage
(``Trainer.build`` on the topology's devices, ``Trainer.compile`` with the run's shardings, donation and compiler
options). Checked against the compiled programs' own analyses and hand counts: the plan's memory and FLOP figures,
the roofline arithmetic, that remat "full" needs less temporary memory than "none", that a step split over 4 chips
costs each a quarter of the one-chip step's FLOPs, and that bad topologies and batches are errors naming the
problem.
"""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audioldm2_jax import compilation
from audioldm2_jax.configs import common
from audioldm2_jax.models import layers
from audioldm2_jax.models.gpt2 import GPT2Model
from audioldm2_jax.parallel.partitioning import make_mesh
from audioldm2_jax.plan import report, sampling
from audioldm2_jax.plan.__main__ import main as plan_main
from audioldm2_jax.plan.topology import CHIPS, parse_topology
from audioldm2_jax.plan.training import input_bytes, plan_step
from audioldm2_jax.train import config as config_lib
from audioldm2_jax.train.config import ConfigError
from audioldm2_jax.train.loop import Trainer
from audioldm2_jax.train.stages import Stage
from audioldm2_jax.train.stages import common as stage_common

pytestmark = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                reason="libtpu is not installed (the test extra's jax[tpu]): no TPU compiler to plan "
                                       "with")

BATCH = 32
GPT2 = dict(vocab_size=8, n_positions=128, n_embd=64, n_layer=2, n_head=4)  # n_embd = the 64 mel bins


class RegressionStage(Stage):
    """A GPT-2 over the clip's log-mel frames (``[B, T, 64]`` as input embeddings) regressing each next frame."""

    name = "plan_regression"
    group_components = {"gpt2": ("gpt2",)}

    def __init__(self, config, dtype=jnp.float32):
        super().__init__(config, dtype)
        self.net = GPT2Model(self.model_configs["gpt2"], dtype=dtype)

    def host_batch(self, batch):
        return {"frames": stage_common.log_mel(batch)}

    def loss(self, group, params, frozen, extras, batch, rng, step, options):
        x = batch["frames"]
        hidden = self.net.apply({"params": params["gpt2"]["gpt2"]}, x, jnp.ones(x.shape[:2], jnp.int32))
        return jnp.mean(jnp.square(hidden[:, :-1].astype(jnp.float32) - x[:, 1:])), {}


def regression_config(batch: int = BATCH, mesh=None):
    c = common.base_config()
    c.stage = f"{__name__}:RegressionStage"
    common.procedural_data(c, 0.64, clips=8)  # 64 frames (procedural clips last at least 0.5 s)
    c.data.compute_fbank = False
    c.data.require_text = False
    c.model.gpt2.update(GPT2)
    c.batch_size = batch
    c.ema.decay = 0.999
    c.mesh.update(mesh or dict(data=1, fsdp=4, tensor=1))
    c.text.t5_tokenizer = c.text.clap_tokenizer = "unused"  # the stage reads no captions
    assert c.compute_dtype == "auto" and c.prng_impl == "auto"  # resolved by the mesh's platform
    return c


@pytest.fixture(scope="module")
def topology():
    return parse_topology("v5p:2x2x1")


@pytest.fixture(scope="module")
def plans(topology):
    """``{name: (plan, compiled)}``: remat none and full over the 4 chips (fsdp 4), and none on 1 chip. Planned
    with the process-wide PRNG implementation set as a training process on this CPU host sets it (unsafe_rbg), and
    the config's ``compute_dtype`` and ``prng_impl`` "auto": what the programs use must be the TPU's choice."""
    devices = topology.devices()
    out = {}
    before = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", config_lib.resolve_prng_impl("auto", "cpu"))
    try:
        for name, remat, devs, mesh in (("none", "none", devices, None), ("full", "full", devices, None),
                                        ("one_chip", "none", devices[:1], dict(data=1, fsdp=1, tensor=1))):
            out[name] = plan_step(regression_config(mesh=mesh), topology, devs, remat=remat)
    finally:
        jax.config.update("jax_default_prng_impl", before)
    return out


def test_plan_figures_are_the_compiled_programs(plans):
    """Every memory and FLOP figure is the compiled TPU program's own; the derived ones follow the roofline."""
    for plan, compiled in plans.values():
        memory, cost = compiled.memory_analysis(), compiled.cost_analysis()
        assert plan.argument_bytes == memory.argument_size_in_bytes
        assert plan.temp_bytes == memory.temp_size_in_bytes
        assert plan.output_bytes == memory.output_size_in_bytes
        assert plan.alias_bytes == memory.alias_size_in_bytes > 0  # the donated state is updated in place
        assert plan.total_bytes == (memory.argument_size_in_bytes + memory.output_size_in_bytes
                                    - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
        assert plan.flops == cost["flops"] > 0
        assert plan.bytes_accessed == cost["bytes accessed"] > 0
        chip = CHIPS["v5p"]
        step = max(cost["flops"] / chip.peak_bf16_flops, cost["bytes accessed"] / chip.hbm_bytes_per_s)
        assert plan.step_seconds == pytest.approx(step, rel=1e-12)
        assert plan.examples_per_second == pytest.approx(BATCH / step, rel=1e-12)
        assert plan.utilisation == pytest.approx(cost["flops"] / chip.peak_bf16_flops / step, rel=1e-12)
        assert plan.fits == (plan.total_bytes <= chip.hbm_bytes)
        # the logical state and batch are inside the laid-out arguments (TPU pads small arrays to its tiles)
        assert plan.state_bytes + plan.frozen_bytes + plan.batch_bytes <= plan.argument_bytes


def test_plan_state_bytes_by_hand(plans):
    """One chip holds float32 parameters, AdamW's two moments and the EMA copy: 16 bytes a parameter, plus int32
    counters; over fsdp 4 a quarter of it, plus the leaves too small to split (norms, biases of width 64)."""
    one, _ = plans["one_chip"]
    params = one.trainable_params
    # two GPT-2 blocks (four 64-wide products: 12 x 64^2 weights, 13 x 64 biases and norms), token (vocab 8) and
    # position (128) tables, ln_f
    assert params == 2 * (12 * 64 * 64 + 13 * 64) + 8 * 64 + 128 * 64 + 2 * 64
    assert 16 * params <= one.state_bytes <= 16 * params + 64
    four, _ = plans["none"]
    assert 16 * params / 4 <= four.state_bytes <= one.state_bytes / 4 + 16 * 64 * 4 * 8
    assert four.batch_bytes == one.batch_bytes / 4 == BATCH * 64 * 64 * 4 / 4


def test_plan_remat_full_needs_less_temporary_memory(plans):
    """Measured: 16.23 MB of temporaries without remat, 15.62 MB with "full" (the blocks' activations are
    recomputed in the backward pass: 389 -> 478 MFLOP per chip)."""
    none, full = plans["none"][0], plans["full"][0]
    assert full.temp_bytes < none.temp_bytes, (full.temp_bytes, none.temp_bytes)
    assert full.flops > none.flops  # the forward pass runs again in the backward pass


def test_plan_flops_per_chip_are_the_global_count_over_the_chips(plans):
    """The same step compiled for one chip and for 4 (the batch and the state split four ways): each chip does a
    quarter of the work (measured: 4 x 389.3 MFLOP against 1556.7 MFLOP, 0.03 % apart; the loss and global-norm
    reductions are not split)."""
    one, four = plans["one_chip"][0], plans["none"][0]
    assert four.flops * 4 == pytest.approx(one.flops, rel=0.01), (four.flops * 4, one.flops)


def test_plan_report_states_the_figures(plans):
    text = report.step_report(plans["none"][0])
    plan = plans["none"][0]
    assert "v5p:2x2x1 (4 chips" in text and "compiled by the TPU compiler" in text
    assert f"{plan.flops / 1e12:.4g} TFLOP" in text
    assert f"temporaries                         {plan.temp_bytes / 2**20:.1f} MiB" in text
    assert "fsdp 4, remat none, 1 micro-batch" in text


def test_plan_topology_devices_are_the_named_chips():
    kinds = {name: parse_topology(name).devices() for name in ("v5e:2x2", "v5p:2x2x1", "v4-8")}
    assert [len(d) for d in kinds.values()] == [4, 4, 4]  # v4-8: 8 TensorCores, 4 megacore chips
    assert [d[0].device_kind for d in kinds.values()] == ["TPU v5 lite", "TPU v5", "TPU v4"]
    assert parse_topology("v5p-128").grid == (4, 4, 4) and parse_topology("v5e-256").grid == (16, 16)
    assert parse_topology("2xv6e-256").num_chips == 512 and parse_topology("4xh100-8").num_chips == 32


@pytest.mark.parametrize(("name", "message"), [
    ("v9-8", "unknown accelerator 'v9'"),
    ("v5p-100", "no v5p slice has 100 TensorCores; slices are v5p-2, v5p-4, v5p-8"),
    ("v5e:2x2x2", "a v5e grid has 2 positive sizes"),
    ("tpu-pod", "topology 'tpu-pod' is not understood"),
])
def test_plan_bad_topology_is_named(name, message):
    with pytest.raises(ValueError, match=message):
        parse_topology(name)


def test_plan_batch_the_data_axes_cannot_split_is_named(topology):
    with pytest.raises(ConfigError, match=r"batch_size=6 is not divisible by the batch axes data x fsdp = 4"):
        plan_step(regression_config(batch=6, mesh=dict(data=2, fsdp=2, tensor=1)), topology)


def test_plan_command_names_bad_input(capsys):
    assert plan_main(["--config", "configs/smoke.py", "--topology", "v5p-100"]) == 2
    assert "no v5p slice has 100 TensorCores" in capsys.readouterr().err
    assert plan_main(["--config", "configs/smoke.py", "--topology", "v5p:2x2x1", "--batch-size", "6"]) == 2
    assert "batch_size=6 is not divisible by the batch axes" in capsys.readouterr().err


def test_plan_sweep_ranks_what_fits_and_names_what_is_rejected(capsys):
    """The command's sweep on the smoke config's toy stage: one layout compiled, one the batch axes cannot split."""
    assert plan_main(["--config", "configs/smoke.py", "--topology", "v5p:2x2x1", "--batch-size", "8", "--sweep",
                      "--meshes", "data=2,fsdp=2", "--remats", "none", "--micro-batch-counts", "1,3"]) == 0
    out = capsys.readouterr().out
    assert "| 1 | data 2 x fsdp 2, remat none, 1 micro-batch |" in out
    assert ("| - | data 2 x fsdp 2, remat none, 3 micro-batches | not compiled: ConfigError: config error: "
            "batch_size=8 / grad_accum_steps=3 does not give micro-batches divisible by the batch axes") in out


def test_plan_mesh_spans_slices_along_data():
    """Two slices joined over the data-centre network: the trainer's mesh puts them on the data axis (only it
    crosses slices); jax.make_mesh alone refuses devices of several slices."""
    devices = parse_topology("2xv5p:2x2x1").devices()
    mesh = make_mesh({"data": 2, "fsdp": 4, "tensor": 1}, devices=devices)
    slices = np.vectorize(lambda d: d.slice_index)(mesh.devices)
    assert slices.shape == (2, 4, 1) and (slices == np.arange(2)[:, None, None]).all()
    assert len({d.id for d in mesh.devices.flat}) == 8
    with pytest.raises(ValueError, match=r"mesh shape \(2, 3, 4\): no axis is a multiple of the 6 slices"):
        make_mesh({"data": 2, "fsdp": 3, "tensor": 4}, devices=parse_topology("6xv5p:2x2x1").devices())


def test_plan_inputs_only_are_the_compiled_plans_inputs(plans, topology):
    """``--inputs-only`` (no compile) reports the same per-chip input bytes as the compiled plan."""
    plan = plans["none"][0]
    got = input_bytes(regression_config(), topology)
    assert got == dict(state=plan.state_bytes, frozen=plan.frozen_bytes, batch=plan.batch_bytes,
                       params=plan.trainable_params)


def test_plan_gpu_estimate_needs_cpu_devices_and_says_how():
    """A GPU cluster is estimated on as many CPU devices; a process started with fewer is told the flag to set."""
    with pytest.raises(ValueError, match=r"XLA_FLAGS=--xla_force_host_platform_device_count=64"):
        parse_topology("8xh100-8").devices()


def test_plan_auto_settings_follow_the_mesh_not_the_host(plans, topology, tmp_path):
    """"auto" compute dtype and PRNG are chosen by the platform of the mesh's devices: on this CPU host, a trainer
    on the TPU topology computes in bfloat16 and its compiled step takes threefry keys (jax's default on TPU), even
    with the process-wide implementation set to unsafe_rbg as a CPU training process sets it; a trainer on the
    host's CPU devices computes in float32 (it builds without compiling)."""
    assert jax.default_backend() == "cpu"
    for plan, compiled in plans.values():
        assert (plan.compute_dtype, plan.prng_impl) == ("bfloat16", "threefry2x32")
        key = compiled.args_info[0][3]  # (state, frozen, batch, key)
        assert str(key._aval.dtype) == "key<fry>", key
        assert "bf16" in compiled.as_text()  # the GPT-2 blocks compute in bfloat16
    tpu = Trainer.build(regression_config(), tmp_path / "tpu", devices=topology.devices())
    cpu = Trainer.build(regression_config(mesh=dict(data=1, fsdp=1, tensor=1)), tmp_path / "cpu",
                        devices=jax.devices("cpu")[:1])
    assert (tpu.stage.dtype, cpu.stage.dtype) == (jnp.bfloat16, jnp.float32)
    assert (tpu.attention, cpu.attention) == ("xla", "per_head")
    assert config_lib.resolve_prng_impl("auto", "tpu") is None  # jax's default, threefry2x32
    assert config_lib.resolve_prng_impl("auto", "cpu") == "unsafe_rbg"
    assert config_lib.resolve_prng_impl("rbg", "tpu") == "rbg"  # an explicit choice stays


def test_plan_compile_options_follow_the_lowered_programs_devices(topology):
    """A program lowered for TPU devices on this CPU host compiles for TPU: no XLA:CPU options by default."""
    sharding = jax.sharding.SingleDeviceSharding(topology.devices()[0])
    lowered = jax.jit(lambda x: x * 2).lower(jax.ShapeDtypeStruct((8, 128), jnp.float32, sharding=sharding))
    assert compilation.lowered_platform(lowered) == "tpu"
    assert compilation.lowered_platform(jax.jit(lambda x: x * 2).lower(np.ones(3, np.float32))) == "cpu"
    assert compilation.compile_lowered(lowered).cost_analysis()["flops"] == 8 * 128


# ----------------------------------------------------------------------------------------------------------------
# The sampling program (--sample)
# ----------------------------------------------------------------------------------------------------------------

SAMPLE_BATCH = 4  # prompts: one per chip of the 4-chip topologies below
SAMPLE_SECONDS = 0.32  # 32 mel frames: latents [8, 16, 8]


def nano_pipeline_config():
    """The micro models of the test configs (configs/common.micro_models) with a two-level UNet (one plain and one
    cross-attention level reading the LOA and T5 streams): the smallest pipeline that runs every part of the
    sampling program."""
    c = common.base_config()
    common.micro_models(c)
    common.procedural_data(c, SAMPLE_SECONDS, clips=8)
    c.model.unet.update(dict(
        block_out_channels=(16, 16), layers_per_block=(1, 1), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=((None, 16, 16),) * 2,
        transformer_layers_per_block=(1, 1), num_heads=(2, 2)))
    return c


@pytest.fixture(scope="module")
def estimate_pipeline(tmp_path_factory):
    """The nano pipeline, with abstract parameters, over 4 CPU devices standing in for 4 H100s (a GPU estimate:
    XLA:CPU compiles the sampling programs in seconds, the TPU compiler in a minute)."""
    topology = parse_topology("h100-4")
    return topology, sampling.planning_pipeline(nano_pipeline_config(), topology,
                                                tokenizer_dir=tmp_path_factory.mktemp("tokenizers"))


@pytest.fixture(scope="module")
def sample_plans(estimate_pipeline):
    """``{steps: (plan, program, decode)}`` for 2 and 4 DDIM steps with guidance, 4 prompts over data 4."""
    topology, pipe = estimate_pipeline
    return {steps: sampling.plan_pipeline_sampling(pipe, topology, batch_size=SAMPLE_BATCH, steps=steps,
                                                   seconds=SAMPLE_SECONDS, guidance=3.5)
            for steps in (2, 4)}


def check_sample_figures(plan, program, decode, chip):
    """Every memory and FLOP figure of a sampling plan is its compiled programs' own; the derived ones follow."""
    memory, cost = program.compiled.memory_analysis(), program.compiled.cost_analysis()
    decode_cost = decode.cost_analysis()
    assert plan.argument_bytes == memory.argument_size_in_bytes >= plan.param_bytes > 0
    assert plan.temp_bytes == memory.temp_size_in_bytes > 0
    assert plan.output_bytes == memory.output_size_in_bytes and plan.alias_bytes == memory.alias_size_in_bytes
    assert plan.total_bytes == (memory.argument_size_in_bytes + memory.output_size_in_bytes
                                - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
    assert plan.program_flops == cost["flops"] > plan.decode_flops == decode_cost["flops"] > 0
    assert plan.program_bytes_accessed == cost["bytes accessed"]
    assert plan.decode_bytes_accessed == decode_cost["bytes accessed"]
    step = cost["flops"] - decode_cost["flops"]
    assert plan.flops == pytest.approx(cost["flops"] + (plan.steps - 1) * step, rel=1e-12)
    seconds = max(plan.flops / chip.peak_bf16_flops, plan.bytes_accessed / chip.hbm_bytes_per_s)
    assert plan.batch_seconds == pytest.approx(seconds, rel=1e-12)
    assert plan.clips_per_second == pytest.approx(SAMPLE_BATCH / seconds, rel=1e-12)
    assert plan.fits == (plan.total_bytes <= chip.hbm_bytes)
    # every chip holds the whole UNet, VAE decoder and vocoder (data parallelism): float32 parameters
    params = program.args[0]
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves((params["unet"], params["vocoder"],
                                                                params["vae"]["params"]["decoder"],
                                                                params["vae"]["params"]["post_quant_conv"])))
    assert plan.param_bytes == 4 * count


def test_plan_sample_figures_are_the_compiled_programs(sample_plans):
    """Also by hand: XLA:CPU lays the inputs out unpadded, so the program's arguments are the parameters it reads
    and one chip's share of the latents [1, 8, 16, 8] and conditioning (LOA [2, 8, 16], T5 stream [2, 24, 16] and
    its mask: 2 rows, [uncond; cond]) and the guidance scale; the loop seed, unused without DDIM eta noise, is
    dropped."""
    for plan, program, decode in sample_plans.values():
        inputs = 4 * (8 * 16 * 8 + 2 * 8 * 16 + 2 * 24 * 16 + 2 * 24 + 1)
        assert program.args[3].shape == (8, 8, 16) and program.args[4].shape == (8, 24, 16)
        assert plan.argument_bytes == plan.param_bytes + inputs
        assert (plan.steps, plan.batch_size, plan.guidance) == (program.loop_steps, SAMPLE_BATCH, True)
        assert plan.mesh == {"data": 4, "fsdp": 1, "tensor": 1}
        # a GPU estimate computes as the GPU would (bfloat16, threefry), not as its stand-in CPU devices
        assert (plan.compute_dtype, plan.prng_impl) == ("bfloat16", "threefry2x32")
        check_sample_figures(plan, program, decode, CHIPS["h100"])


def test_plan_sample_flops_scale_with_steps(sample_plans, estimate_pipeline):
    """XLA counts the denoising loop's body once whatever its trip count: the program's own count is the same at 2
    and 4 steps, and the plan adds the other steps. One step's count (the program's less its decoders') is the
    UNet's forward pass on the chip's rows (one prompt, twice with guidance), counted independently from the UNet
    alone compiled for one device: measured 0.5 % above it (the sampler's update, the guidance combination, the
    element-wise work fused differently). (The lowered, unoptimised forward counts 9 % less than either.)"""
    (two, prog_2, _), (four, prog_4, _) = sample_plans[2], sample_plans[4]
    assert prog_2.compiled.cost_analysis()["flops"] == prog_4.compiled.cost_analysis()["flops"]
    assert four.flops - two.flops == pytest.approx(2 * two.step_flops, rel=1e-12)
    assert four.flops / two.flops == pytest.approx((4 * two.step_flops + two.decode_flops)
                                                   / (2 * two.step_flops + two.decode_flops), rel=1e-12)
    _, pipe = estimate_pipeline
    _, latents, _, loa, context, mask, _ = prog_2.args
    rows = 2 * SAMPLE_BATCH // 4  # [uncond; cond] rows of one chip's prompt

    def local(x):
        return jax.ShapeDtypeStruct((rows,) + x.shape[1:], x.dtype)

    with layers.use_attention("xla"):
        unet_flops = jax.jit(lambda p, x, t, a, c, m: pipe.unet.apply(p, x, t, a, None, c, m)).lower(
            jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), pipe.params["unet"]), local(latents),
            jax.ShapeDtypeStruct((), jnp.int32), local(loa), local(context), local(mask)).compile().cost_analysis()[
            "flops"]
    assert two.step_flops == pytest.approx(unet_flops, rel=0.01), (two.step_flops, unet_flops)


def test_plan_sample_report_states_the_figures(sample_plans):
    plan = sample_plans[4][0]
    text = report.sample_report(plan)
    assert "h100-4 (4 chips" in text and "ESTIMATE" in text
    assert "4 prompts of 0.32 s, 4 denoising steps, classifier-free guidance" in text
    assert f"FLOPs per batch                     {plan.flops / 1e12:.4g} TFLOP" in text
    assert f"clips/s                             {plan.clips_per_second:.2f}" in text


def test_plan_sample_command_names_bad_input(capsys):
    assert plan_main(["--config", "configs/smoke.py", "--topology", "v5p:2x2x1", "--sample", "--sweep"]) == 2
    assert "--sample plans the sampling program: --sweep" in capsys.readouterr().err
    xla_flags = os.environ.get("XLA_FLAGS")
    assert plan_main(["--config", "configs/smoke.py", "--topology", "h100-1", "--sample", "--steps", "0"]) == 2
    assert "--steps 0: the sampler takes at least one step" in capsys.readouterr().err
    # the GPU estimate's CPU device count is this process's start-up flag, not one its later subprocesses inherit
    assert os.environ.get("XLA_FLAGS") == xla_flags


def test_plan_sample_refuses_clips_decoded_in_windows(estimate_pipeline):
    """The pipeline decodes clips over three windows (3 x 10.24 s) in programs of their own: not planned, said so
    before anything compiles."""
    topology, pipe = estimate_pipeline
    with pytest.raises(ValueError, match=r"a clip of 31 s: the pipeline decodes clips this long window by window"):
        sampling.plan_pipeline_sampling(pipe, topology, batch_size=4, steps=2, seconds=31.0)


@pytest.mark.slow
def test_plan_sample_compiled_by_the_tpu_compiler(tmp_path):
    """The nano pipeline's sampling program compiled by libtpu for a v5e 2x2 slice (about a minute on two cores):
    its figures are the TPU programs' own, it computes in bfloat16 with threefry keys although this host's backend
    is a CPU, and its step count is the UNet's forward pass on the chip's rows."""
    topology = parse_topology("v5e:2x2")
    plan, program, decode = sampling.plan_sampling(nano_pipeline_config(), topology, steps=2,
                                                   seconds=SAMPLE_SECONDS, tokenizer_dir=tmp_path)
    assert plan.batch_size == SAMPLE_BATCH  # default: one prompt per batch shard
    assert (plan.compute_dtype, plan.prng_impl) == ("bfloat16", "threefry2x32")
    assert "bf16" in program.compiled.as_text()
    check_sample_figures(plan, program, decode, CHIPS["v5e"])
