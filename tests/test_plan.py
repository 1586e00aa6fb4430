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

import jax.numpy as jnp
import numpy as np
import pytest

from audioldm2_jax.configs import common
from audioldm2_jax.models.gpt2 import GPT2Model
from audioldm2_jax.parallel.partitioning import make_mesh
from audioldm2_jax.plan import report
from audioldm2_jax.plan.__main__ import main as plan_main
from audioldm2_jax.plan.topology import CHIPS, parse_topology
from audioldm2_jax.plan.training import input_bytes, plan_step
from audioldm2_jax.train.config import ConfigError
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
    return c


@pytest.fixture(scope="module")
def topology():
    return parse_topology("v5p:2x2x1")


@pytest.fixture(scope="module")
def plans(topology):
    """``{name: (plan, compiled)}``: remat none and full over the 4 chips (fsdp 4), and none on 1 chip."""
    devices = topology.devices()
    out = {}
    for name, remat, devs, mesh in (("none", "none", devices, None), ("full", "full", devices, None),
                                    ("one_chip", "none", devices[:1], dict(data=1, fsdp=1, tensor=1))):
        out[name] = plan_step(regression_config(mesh=mesh), topology, devs, remat=remat)
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
