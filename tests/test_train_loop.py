"""The training loop with the tiny ``toy`` stage (two parameter groups, a run-level extra, two compiled step
variants): config errors before compilation, a sharded step equal to the one-device step, gradient accumulation,
non-finite steps, restore onto another mesh, and a hard-killed / preempted run resuming with the same losses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import toy_faults
import train_fixtures as testing
from jax.sharding import PartitionSpec

from audioldm2_jax.train import config as config_lib
from audioldm2_jax.train.loop import NonFiniteError, Trainer, accumulate_gradients
from audioldm2_jax.train.metrics import read_jsonl

ROOT = Path(__file__).resolve().parents[1]


def smoke_config(**overrides):
    c = config_lib.load_config_file("configs/smoke.py")  # the packaged config
    c.log.progress_bar = False
    c.log.tensorboard = False
    testing.override(c, **overrides)
    return c


def losses_by_step(workdir) -> dict[int, float]:
    """The last logged ``denoiser/loss`` of every step (re-run steps after a resume overwrite earlier entries)."""
    return {row["step"]: row["denoiser/loss"] for row in read_jsonl(Path(workdir) / "metrics.jsonl")}


def host_params(state):
    return jax.tree.map(np.asarray, jax.device_get(state.params))


def test_config_errors_name_the_problem_before_compiling(tmp_path):
    c = smoke_config()
    c.optimizer.lr = 1e-3  # a typo of learning_rate
    with pytest.raises(config_lib.ConfigError, match="optimizer.lr"):
        Trainer.build(c, tmp_path)
    with pytest.raises(config_lib.ConfigError, match=r"mesh .* does not divide the 8 devices"):
        Trainer.build(smoke_config(**{"mesh.data": 3}), tmp_path)
    with pytest.raises(config_lib.ConfigError, match=r"batch_size=12 is not divisible by .* data x fsdp = 8"):
        Trainer.build(smoke_config(**{"mesh.data": 8, "batch_size": 12}), tmp_path)
    with pytest.raises(config_lib.ConfigError, match="grad_accum_steps"):
        Trainer.build(smoke_config(**{"mesh.data": 8, "batch_size": 8, "grad_accum_steps": 2}), tmp_path)
    with pytest.raises(config_lib.ConfigError, match="stage='nope'"):
        Trainer.build(smoke_config(stage="nope"), tmp_path)


def test_gradient_accumulation_equals_the_full_batch():
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((5, 3)).astype(np.float32), "b": np.zeros(3, np.float32)}
    batch = {"x": rng.standard_normal((8, 5)).astype(np.float32), "y": rng.standard_normal((8, 3)).astype(np.float32)}

    def loss_fn(p, b, key):
        pred = b["x"] @ p["w"] + p["b"]
        return ((pred - b["y"]) ** 2).mean(), {"mean_pred": pred.mean()}

    key = jax.random.key(0)
    full = accumulate_gradients(loss_fn, params, batch, key, 1)
    accumulated = jax.jit(lambda p, b: accumulate_gradients(loss_fn, p, b, key, 4))(params, batch)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(accumulated)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def sharded_trainer(tmp_path_factory):
    c = smoke_config(**{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "grad_accum_steps": 2, "batch_size": 16})
    return Trainer.build(c, tmp_path_factory.mktemp("sharded"))


def _first_batches(trainer, count):
    from audioldm2_jax.data.pipeline import make_dataset
    from audioldm2_jax.train.loop import data_config

    iterator = make_dataset(data_config(trainer.config), seed=0)
    return [next(iterator) for _ in range(count)]


def test_sharded_step_equals_the_one_device_step(sharded_trainer, tmp_path):
    t8 = sharded_trainer
    c1 = smoke_config(**{"mesh.data": 1, "grad_accum_steps": 2, "batch_size": 16})
    t1 = Trainer.build(c1, tmp_path, devices=jax.devices()[:1])
    state8 = t8.init_state(jax.random.key(0))
    kernel = state8.params["denoiser"]["denoiser"]["fc_in"]["kernel"]
    assert kernel.sharding.spec == PartitionSpec("fsdp", "tensor")  # (embed, mlp): born sharded
    assert len(kernel.addressable_shards) == 8
    state1 = jax.device_put(jax.device_get(state8), t1.state_shardings)
    key = jax.random.key(3)
    for index, host in enumerate(_first_batches(t8, 2)):
        state8, m8 = t8.step(state8, {}, t8.device_batch(host), key, t8.stage.step_options(index))
        state1, m1 = t1.step(state1, {}, t1.device_batch(host), key, t1.stage.step_options(index))
        for name in ("denoiser/loss", "probe/loss", "denoiser/grad_norm", "probe/grad_norm"):
            np.testing.assert_allclose(float(m8[name]), float(m1[name]), rtol=2e-5, err_msg=name)
    # Adam moves an element by about the learning rate whatever its gradient's size, so where a gradient is near
    # zero the sharded and the one-device sums (different orders) can give visibly different updates: the absolute
    # tolerance is 1e-3 of the two steps' largest update.
    update_scale = 2 * c1.optimizer.learning_rate
    for a, b in zip(jax.tree.leaves(host_params(state8)), jax.tree.leaves(host_params(state1))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3 * update_scale)
    assert state8.params["denoiser"]["denoiser"]["fc_in"]["kernel"].sharding.spec == PartitionSpec("fsdp", "tensor")


def test_nonfinite_steps_are_skipped_counted_and_stop_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv(toy_faults.NAN_STEPS, "2,4")
    c = smoke_config(stage=toy_faults.STAGE)
    trainer = Trainer.build(c, tmp_path / "skip")
    state = trainer.init_state(jax.random.key(0))
    key = jax.random.key(1)
    seen = []
    for index, host in enumerate(_first_batches(trainer, 5)):
        state, m = trainer.step(state, {}, trainer.device_batch(host), key, trainer.stage.step_options(index))
        seen.append((host_params(state), float(m["nonfinite_skipped"]), float(m["consecutive_nonfinite"])))
    assert [s[1] for s in seen] == [0, 0, 1, 2, 2]
    assert [s[2] for s in seen] == [0, 0, 1, 2, 0]
    for a, b, c_ in zip(jax.tree.leaves(seen[1][0]), jax.tree.leaves(seen[3][0]), jax.tree.leaves(seen[4][0])):
        np.testing.assert_array_equal(a, b)  # steps 2 and 3 (non-finite) left every parameter as it was
    assert any(not np.array_equal(a, c_) for a, c_ in zip(jax.tree.leaves(seen[3][0]), jax.tree.leaves(seen[4][0])))
    assert int(state.skipped) == 2

    monkeypatch.setenv(toy_faults.NAN_STEPS, "2,100")
    stop = smoke_config(stage=toy_faults.STAGE, **{"max_consecutive_nonfinite": 3, "num_steps": 10})
    with pytest.raises(NonFiniteError, match=r"3 consecutive steps .* non-finite"):
        Trainer.build(stop, tmp_path / "stop").run()


def test_bad_fault_settings_are_refused_naming_them(monkeypatch):
    """The test-only fault injection checks its settings as the config checks its keys."""
    monkeypatch.setenv(toy_faults.SLEEP_SECONDS, "-1")
    with pytest.raises(ValueError, match=r"TOY_SLEEP_SECONDS=-1.0 must be a number of seconds >= 0"):
        Trainer.build(smoke_config(stage=toy_faults.STAGE), "unused")
    monkeypatch.setenv(toy_faults.SLEEP_SECONDS, "0")
    monkeypatch.setenv(toy_faults.NAN_STEPS, "2")
    with pytest.raises(ValueError, match=r"TOY_NAN_STEPS='2' must be two integers 'start,stop'"):
        Trainer.build(smoke_config(stage=toy_faults.STAGE), "unused")


def test_restore_onto_another_mesh_continues_identically(sharded_trainer, tmp_path):
    c8 = smoke_config(**{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "grad_accum_steps": 2, "num_steps": 4,
                         "checkpoint.every_steps": 2, "batch_size": 16})
    t8 = Trainer.build(c8, tmp_path)
    t8.compiled = sharded_trainer.compiled  # same program: reuse its compilations
    summary = t8.run()
    assert summary["final_step"] == 4 and (tmp_path / "checkpoints" / "4").is_dir()

    c2 = smoke_config(**{"mesh.data": 1, "mesh.tensor": 2, "grad_accum_steps": 2, "num_steps": 4,
                         "batch_size": 16})
    t2 = Trainer.build(c2, tmp_path, devices=jax.devices()[2:4])
    from audioldm2_jax.train.checkpoint import Checkpointer

    checkpointer = Checkpointer(tmp_path / "checkpoints", 2, 2)
    restored2 = checkpointer.restore(4, t2.restore_target())
    restored8 = checkpointer.restore(4, t8.restore_target())
    checkpointer.close()
    kernel = restored2.params["denoiser"]["denoiser"]["fc_in"]["kernel"]
    assert kernel.sharding.mesh.shape == {"data": 1, "fsdp": 1, "tensor": 2}
    assert kernel.sharding.spec == PartitionSpec("fsdp", "tensor")
    assert len(kernel.addressable_shards) == 2 and kernel.addressable_shards[0].data.shape[1] == kernel.shape[1] // 2
    assert int(restored2.step) == 4
    for a, b in zip(jax.tree.leaves(host_params(restored2)), jax.tree.leaves(host_params(restored8))):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.asarray(restored2.ema["denoiser"]["denoiser"]["fc_out"]["kernel"]),
                                  np.asarray(restored8.ema["denoiser"]["denoiser"]["fc_out"]["kernel"]))
    host = _first_batches(t8, 1)[0]
    key = jax.random.key(5)
    _, m8 = t8.step(restored8, {}, t8.device_batch(host), key, 0)
    _, m2 = t2.step(restored2, {}, t2.device_batch(host), key, 0)
    np.testing.assert_allclose(float(m2["denoiser/loss"]), float(m8["denoiser/loss"]), rtol=2e-5)


def _train_subprocess(workdir, *overrides, env):
    return subprocess.Popen(
        [sys.executable, "train.py", "--config", "configs/smoke.py", "--workdir", str(workdir),
         *[f"--config.{o}" for o in overrides]],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_step(proc, workdir, step, timeout=240.0):
    path = Path(workdir) / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training exited early ({proc.returncode}):\n{proc.stdout.read()[-3000:]}")
        if path.exists() and any(row["step"] >= step for row in read_jsonl(path)):
            return
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"no step {step} logged within {timeout} s")


def test_hard_kill_and_preemption_resume_with_the_same_losses(tmp_path, tmp_path_factory):
    steps = 8
    common = [f"num_steps={steps}", "checkpoint.every_steps=2", "log.progress_bar=False", "log.tensorboard=False"]
    # Reference: the uninterrupted run.
    reference_dir = tmp_path / "reference"
    reference_trainer = Trainer.build(smoke_config(num_steps=steps, **{"checkpoint.every_steps": 2}), reference_dir)
    reference_trainer.run()
    reference = losses_by_step(reference_dir)
    assert sorted(reference) == list(range(1, steps + 1))

    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    workdir = tmp_path / "run"

    # 1. Unknown keys on the command line fail before anything runs, naming the key.
    bad = _train_subprocess(workdir, "optimizer.lrr=1", env=env)
    out, _ = bad.communicate(timeout=120)
    assert bad.returncode != 0 and "lrr" in out

    # 2. A hard kill (SIGKILL) after step 5: at most one checkpoint interval is lost.
    slow = [f"stage={toy_faults.STAGE}"]
    slow_env = toy_faults.environment(env, sleep_seconds=0.25)
    proc = _train_subprocess(workdir, *common, *slow, env=slow_env)
    _wait_for_step(proc, workdir, 5)
    proc.kill()
    proc.wait(timeout=60)
    checkpoints = workdir / "checkpoints"
    complete = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    assert complete and complete[-1] >= 2
    # A save cut short leaves a temporary directory; resume must never take it for a checkpoint.
    partial = checkpoints / "9.orbax-checkpoint-tmp-1234"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "junk").write_text("half-written")

    # 3. Resume, then preempt with SIGTERM: a checkpoint is saved at the current step and the exit status is 0.
    proc = _train_subprocess(workdir, *common, *slow, env=slow_env)
    _wait_for_step(proc, workdir, complete[-1] + 2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert '"preempted": true' in out
    assert f'"resumed_from": {complete[-1]}' in out
    preempted_at = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    assert preempted_at >= complete[-1] + 2

    # 4. Resume to the end; every step's loss equals the uninterrupted run's.
    final = Trainer.build(smoke_config(num_steps=steps, **{"checkpoint.every_steps": 2}), workdir)
    final.compiled = reference_trainer.compiled  # the same programs
    summary = final.run()
    assert summary["resumed_from"] == preempted_at and summary["final_step"] == steps
    resumed = losses_by_step(workdir)
    assert sorted(resumed) == list(range(1, steps + 1))
    for step in range(1, steps + 1):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-6), f"step {step}"
    assert (workdir / "export" / "scheduler" / "scheduler_config.json").is_file()


CACHE_PROBE = """
import sys
from jax import monitoring
from audioldm2_jax.train import config as config_lib
from audioldm2_jax.train.loop import train

hits = []
monitoring.register_event_listener(lambda name, **_: hits.append(name) if name.endswith("/cache_hits") else None)
workdir, cache, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = config_lib.load_config_file("configs/smoke.py")
c.num_steps, c.checkpoint.every_steps, c.compilation_cache_dir = steps, 2, cache
c.log.progress_bar = c.log.tensorboard = False
train(c, workdir)
print("CACHE_HITS", len(hits))
"""


def test_compilation_cache_dir_lets_a_resumed_run_load_its_step(tmp_path):
    """``compilation_cache_dir``: the first run compiles and fills the folder, the resumed run (a new process, as
    after a preemption) loads its compiled programs from it (jax's cache-hit events) instead of compiling them."""
    cache = tmp_path / "cache"
    env = dict(os.environ, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")  # the toy step compiles in under 1 s
    hits = []
    for steps in (2, 4):
        out = subprocess.run([sys.executable, "-c", CACHE_PROBE, str(tmp_path / "run"), str(cache), str(steps)],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        hits.append(int(out.stdout.split("CACHE_HITS")[-1].split()[0]))
        assert any(cache.iterdir())
    assert hits[0] == 0 and hits[1] > 0, hits
    assert losses_by_step(tmp_path / "run").keys() == {1, 2, 3, 4}  # the second run resumed at step 2
