"""Multi-process JAX on one machine: processes started by the test (``audioldm2_jax.launch.ProcessGroup``, always
killed at the end), 4 simulated CPU devices each, gloo collectives.

- the input pipeline's global batches do not depend on the number of processes, and its state moves between them;
- 2 processes x 4 devices train the ``toy`` stage with the losses and parameters of 1 process x 8 devices; a killed
  process stops the other within the heartbeat timeout; the restart resumes from the last complete checkpoint;
  checkpoints written by 2 processes restore in 1 and the other way round;
- an exception in one process stops the others at once, naming the process;
- a finished run never kills a peer: with one process done long after the others (longer than jax's shutdown barrier
  waits) and the peer-failure watcher polling continuously (``tests/exit_race_runner.py``), every process of a script,
  of ``sample.py`` and of ``train.py`` ends with status 0 and none talks to the coordination service once its
  teardown has begun;
- sampling 6 prompts on 2 processes writes the 6 clips of a single-process run.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import soundfile
import toy_faults

from audioldm2_jax import launch
from audioldm2_jax.data import pipeline as data_pipeline
from audioldm2_jax.parallel import distributed as dist
from audioldm2_jax.train import config as config_lib
from audioldm2_jax.train.checkpoint import Checkpointer, read_data_state
from audioldm2_jax.train.loop import Trainer, data_config
from audioldm2_jax.train.metrics import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
HEARTBEAT_S = 10
# A mesh whose fsdp axis spans the two processes: parameters are sharded across them (each process writes its own
# part of a checkpoint) and each process holds the batch rows of its four devices.
TRAIN = {"mesh.data": 1, "mesh.fsdp": 8, "mesh.tensor": 1, "num_steps": 4, "checkpoint.every_steps": 2,
         "checkpoint.keep": 3, "log.progress_bar": False, "log.tensorboard": False}


def smoke_config(**overrides):
    c = config_lib.load_config_file(str(ROOT / "configs" / "smoke.py"))
    for key, value in {**TRAIN, **overrides}.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def train_command(workdir, **overrides) -> list[str]:
    flags = {**TRAIN, "distributed": "auto", **overrides}
    return ["train.py", "--config", "configs/smoke.py", "--workdir", str(workdir),
            *[f"--config.{k}={v}" for k, v in flags.items()]]


def losses_by_step(workdir) -> dict[int, float]:
    return {row["step"]: row["denoiser/loss"] for row in read_jsonl(Path(workdir) / "metrics.jsonl")}


def host_tree(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The subprocesses' environment: a shared persistent compilation cache (the second launch compiles nothing)."""
    import os

    # unsafe_rbg as in this process (conftest): the single-process sampling reference runs here.
    return dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", PYTHONPATH=str(ROOT),
                JAX_DEFAULT_PRNG_IMPL=str(jax.config.jax_default_prng_impl))


def start(command, env, log_path, num_processes=2, **kwargs) -> launch.ProcessGroup:
    output = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 -- closed with the group's last line
    return launch.ProcessGroup(command, num_processes, devices_per_process=4, heartbeat_timeout_s=HEARTBEAT_S,
                               env=env, cwd=ROOT, output=output, **kwargs).start()


def wait_ok(group: launch.ProcessGroup, timeout: float) -> None:
    codes = group.wait(timeout=timeout, grace=30)
    assert codes == [0] * len(codes), f"exit statuses {codes}:\n" + "\n".join(
        f"--- process {i}\n{group.text(i)[-3000:]}" for i in range(len(codes)))


# ----------------------------------------------------------------------------------------------------------------
# Pieces that need no second process
# ----------------------------------------------------------------------------------------------------------------


def test_global_batches_and_their_state_do_not_depend_on_the_process_count():
    config = {"source": "procedural", "clip_seconds": 0.5, "compute_fbank": False, "procedural_clips": 10,
              "read_threads": 1, "global_batch_size": 4}
    one = data_pipeline.make_dataset(config, 0, 1, seed=5)
    two = [data_pipeline.make_dataset(config, p, 2, seed=5) for p in range(2)]
    for _ in range(4):  # 16 rows: across the epoch boundary at 10
        whole = next(one)
        halves = [next(it) for it in two]
        assert [len(h["path"]) for h in halves] == [2, 2]
        np.testing.assert_array_equal(np.concatenate([h["path"] for h in halves]), whole["path"])
        np.testing.assert_array_equal(np.concatenate([h["log_mel"] for h in halves]), whole["log_mel"])
    # A state saved by 2 processes resumes on 1 at the same global batch, and the other way round.
    state = json.loads(json.dumps(two[1].get_state()))
    assert state["batches"] == 4
    resumed = data_pipeline.make_dataset(config, 0, 1, seed=5)
    resumed.set_state(state)
    expected = next(one)
    np.testing.assert_array_equal(next(resumed)["path"], expected["path"])
    back = data_pipeline.make_dataset(config, 1, 2, seed=5)
    back.set_state(json.loads(json.dumps(resumed.get_state())))
    np.testing.assert_array_equal(next(back)["path"], next(one)["path"][2:])
    # Anything else that changed is still refused.
    other_seed = data_pipeline.make_dataset(config, 0, 1, seed=6)
    with pytest.raises(ValueError, match="different setup"):
        other_seed.set_state(state)


def test_data_state_files_of_another_process_count(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for index in range(2):
        (folder / f"process_{index}-of-2.json").write_text(json.dumps({"batches": 7, "who": index}))
    assert read_data_state(folder, 1, 2) == {"batches": 7, "who": 1}  # its own file
    assert read_data_state(folder, 0, 1)["who"] == 0  # another layout: process 0's, positions checked equal
    (folder / "process_1-of-2.json").write_text(json.dumps({"batches": 8}))
    with pytest.raises(ValueError, match="different global batch positions"):
        read_data_state(folder, 0, 3)
    (folder / "process_1-of-2.json").unlink()
    with pytest.raises(ValueError, match=r"processes \[1\] of 2 are missing"):
        read_data_state(folder, 0, 1)
    assert read_data_state(tmp_path / "absent", 0, 1) is None


def test_settings_shares_and_launcher_arguments():
    settings = dist.DistributedSettings.from_env(
        {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3",
         "JAX_NUM_CPU_DEVICES": "2", "JAX_HEARTBEAT_TIMEOUT_SECONDS": "15"})
    assert (settings.coordinator_address, settings.num_processes, settings.process_id) == ("10.0.0.1:1234", 4, 3)
    assert settings.num_cpu_devices == 2 and settings.heartbeat_timeout_s == 15 and settings.explicit
    flags = dist.DistributedSettings.from_env({"JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}, process_id=1)
    assert flags.process_id == 1  # flags win over the environment
    with pytest.raises(ValueError, match="process_id=4 is outside num_processes=4"):
        dist.DistributedSettings.from_env({"JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "4"})
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two'"):
        dist.DistributedSettings.from_env({"JAX_NUM_PROCESSES": "two"})
    assert dist.launched_multiprocess(env={"SLURM_NTASKS": "8"})
    assert not dist.launched_multiprocess(env={"SLURM_NTASKS": "1"})
    assert not dist.launched_multiprocess(env={"JAX_NUM_PROCESSES": "1", "JAX_COORDINATOR_ADDRESS": "h:1"})
    # 7 prompts over 3 processes: 3 + 2 + 2, contiguous, every one exactly once
    shares = [dist.split_evenly(list(range(7)), i, 3) for i in range(3)]
    assert shares == [(0, [0, 1, 2]), (3, [3, 4]), (5, [5, 6])]
    assert dist.split_evenly([1], 1, 2) == (1, [])
    args, command = launch.parse_args(["-n", "2", "--devices-per-process", "4", "--", "train.py", "--workdir", "x"])
    assert args.num_processes == 2 and args.devices_per_process == 4 and command == ["train.py", "--workdir", "x"]
    group = launch.ProcessGroup(["train.py"], 2, devices_per_process=4, gpus_per_process=2, env={})
    env = group.environment(1, 5555)
    assert group.command == [sys.executable, "train.py"]
    assert env["JAX_PROCESS_ID"] == "1" and env["JAX_NUM_PROCESSES"] == "2"
    assert env["JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:5555" and env["JAX_NUM_CPU_DEVICES"] == "4"
    assert env["JAX_LOCAL_DEVICE_IDS"] == "2,3"
    # The launcher's last line: the first failure, and whether the others had all finished before it.
    group.exit_order = [(0, 0), (1, 0)]
    assert group.failure_report() is None
    group.exit_order = [(0, 0), (1, -signal.SIGABRT)]
    assert group.failure_report().startswith("FAILED: process 1 failed first (aborted (SIGABRT")
    assert "after every other process had finished with status 0: the processes did not leave together" in \
        group.failure_report()
    group.exit_order = [(1, 1), (0, dist.EXIT_PEER_FAILED)]
    assert group.failure_report() == "FAILED: process 1 failed first (exited with status 1)"


# ----------------------------------------------------------------------------------------------------------------
# Failures
# ----------------------------------------------------------------------------------------------------------------

FAILING_SCRIPT = """
import sys, time
from audioldm2_jax.parallel import distributed as dist
dist.initialize()
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
mesh = jax.make_mesh((jax.device_count(),), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("d")), np.ones(jax.local_device_count(), np.float32))
total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))
print(f"sum {float(total(x))}", flush=True)  # one string: gloo writes lines to the same pipe
spread = jax.make_array_from_process_local_data(NamedSharding(mesh, P("d")), np.arange(4.0) + 4 * jax.process_index())
print(f"gathered {dist.gather_to_host({'a': spread, 'b': np.int32(3)})['a'].tolist()}", flush=True)
with dist.exit_together():
    for step in range(100000):
        if step == 10 and jax.process_index() == int(sys.argv[1]):
            raise ValueError(f"the data of process {sys.argv[1]} is broken")
        total(x).block_until_ready()  # process 0 waits here for process 1
"""


def test_an_error_in_one_process_stops_the_others_naming_it(tmp_path, env):
    script = tmp_path / "failing.py"
    script.write_text(FAILING_SCRIPT)
    with start([str(script), "1"], env, tmp_path / "log.txt") as group:
        codes = group.wait(timeout=120, grace=60)
    assert codes == [dist.EXIT_PEER_FAILED, 1], codes
    assert group.first_failure() == (1, 1)
    assert "sum 8.0" in group.text(0) and "sum 8.0" in group.text(1)  # 8 devices over 2 processes, gloo
    whole = str([float(v) for v in range(8)])
    assert f"gathered {whole}" in group.text(0) and f"gathered {whole}" in group.text(1)
    assert "[process 1/2] failed" in group.text(1) and "ValueError: the data of process 1 is broken" in group.text(1)
    assert "[process 0/2] stopping: process 1 failed: ValueError: the data of process 1 is broken" in group.text(0)

    # The launcher's command line, process 0 (the coordinator) failing: the same story, and the launcher's status.
    import subprocess

    run = subprocess.run([sys.executable, "-m", "audioldm2_jax.launch", "-n", "2", "--devices-per-process", "4",
                          "--grace", "60", "--", str(script), "0"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=180)
    assert run.returncode == 1, run.stdout[-3000:]
    assert "[1] [process 1/2] stopping: process 0 failed: ValueError: the data of process 0 is broken" in run.stdout
    assert "[launch] FAILED: process 0 failed first (exited with status 1)" in run.stdout


FINISHING_SCRIPT = """
import sys, time
from audioldm2_jax.parallel import distributed as dist
dist.initialize()
import jax, numpy as np
from jax.experimental import multihost_utils
with dist.exit_together():
    table = multihost_utils.process_allgather(np.array([1.0 + jax.process_index()]))
    sys.stdout.write(f"gathered {table.ravel().tolist()}\\n")  # one write: gloo writes to the same pipe
    sys.stdout.flush()
    if sys.argv[1] == "raise" and jax.process_index() == 1:
        time.sleep(3)  # process 0 is waiting at the exit barrier by now
        raise ValueError("process 1 failed after its last collective")
if sys.argv[1] != "end":
    dist.shutdown()
"""

# The end of a run made uneven (tests/exit_race_runner.py): one process finishes its work EXIT_RACE_WORK_DELAY_S after
# the others (longer than jax's shutdown barrier waits, JAX_SHUTDOWN_TIMEOUT_SECONDS), then starts jax.distributed's
# teardown 1 s late, while the peer-failure watcher polls the coordination service continuously. Run through it, a
# multi-process entry point must still end with status 0 on every process, and no process may talk to the
# coordination service once its teardown has begun (such a call races with process 0 tearing the service down, and a
# thread inside one when the interpreter exits aborts the process).
EXIT_RACE = [str(ROOT / "tests" / "exit_race_runner.py")]
UNEVEN_END = {"EXIT_RACE_SLOW_PROCESS": "1", "EXIT_RACE_WORK_DELAY_S": "8", "JAX_SHUTDOWN_TIMEOUT_SECONDS": "4"}


def assert_left_together(group: launch.ProcessGroup) -> None:
    for index in range(group.num_processes):
        text = group.text(index)
        assert f"process {index} made 0 coordination-service calls after the teardown began" in text, text[-3000:]
        assert "Traceback" not in text, text[-3000:]


def test_a_finished_run_never_kills_a_peer(tmp_path, env):
    script = tmp_path / "finishing.py"
    script.write_text(FINISHING_SCRIPT)
    # distributed.shutdown() at the end: the late process may finish long after the others (process 1, then process
    # 0, the coordination service's host). A script that ends without it: the watcher still stops before jax's exit.
    for slow, ending, extra in ((1, "shutdown", UNEVEN_END), (0, "shutdown", UNEVEN_END), (1, "end", {})):
        with start([*EXIT_RACE, str(script), ending], dict(env, **{**extra, "EXIT_RACE_SLOW_PROCESS": str(slow)}),
                   tmp_path / "log.txt") as group:
            wait_ok(group, timeout=120)
        if extra:
            assert f"process {slow} finishes its work 8.0 s late" in group.text(slow)
        assert f"process {slow} starts the distributed teardown 1.0 s late" in group.text(slow)
        assert "gathered [1.0, 2.0]" in group.text(0) and "gathered [1.0, 2.0]" in group.text(1)
        assert_left_together(group)

    # A process that fails while the others wait at the exit barrier still stops them at once, naming it.
    with start([str(script), "raise"], env, tmp_path / "log.txt") as group:
        codes = group.wait(timeout=120, grace=60)
    assert codes == [dist.EXIT_PEER_FAILED, 1], codes
    assert "[process 0/2] stopping: process 1 failed: ValueError: process 1 failed after its last collective" in \
        group.text(0)


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


def _wait_until(condition, group: launch.ProcessGroup, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if any(code is not None for code in group.poll()):
            raise AssertionError(f"a process exited before {what}: {group.poll()}\n{group.text(0)[-3000:]}\n"
                                 f"{group.text(1)[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout} s")


def _restore(workdir, step, trainer, iterator=None):
    checkpointer = Checkpointer(Path(workdir) / "checkpoints", 2, 3)
    try:
        return checkpointer.restore(step, trainer.restore_target(), iterator)
    finally:
        checkpointer.close()


def test_two_processes_train_as_one_survive_a_kill_and_share_checkpoints(tmp_path, env):
    # Reference: 1 process x 8 devices, the same mesh and global batch.
    reference_dir = tmp_path / "reference"
    reference = Trainer.build(smoke_config(), reference_dir)
    assert reference.run()["final_step"] == 4
    want = losses_by_step(reference_dir)
    assert sorted(want) == [1, 2, 3, 4]

    # 1. 2 processes x 4 devices from scratch, slowed down; process 1 is killed once checkpoint 2 is complete.
    workdir = tmp_path / "two"
    checkpoints = workdir / "checkpoints"
    log = tmp_path / "train_log.txt"
    with start(train_command(workdir, stage=toy_faults.STAGE), toy_faults.environment(env, sleep_seconds=1.0),
               log) as group:
        _wait_until(lambda: (checkpoints / "2").is_dir() and (workdir / "metrics.jsonl").is_file()
                    and max(losses_by_step(workdir)) >= 3, group, 300, "checkpoint 2 and step 3")
        group.send_signal(1, signal.SIGKILL)
        killed = time.monotonic()
        while group.procs[0].poll() is None and time.monotonic() - killed < HEARTBEAT_S + 60:
            time.sleep(0.05)
        survivor_s = time.monotonic() - killed
        codes = group.poll()
    print(f"process 0 exited {survivor_s:.1f} s after process 1 was killed (heartbeat timeout {HEARTBEAT_S} s)")
    assert codes[1] == -signal.SIGKILL and codes[0] not in (None, 0), codes
    assert survivor_s < HEARTBEAT_S + 30
    # Either gloo sees the connection drop inside a collective (a Python error, reported with the index) or, between
    # collectives, the coordination service misses the heartbeats and jax terminates the process.
    survivor = group.text(0)
    assert ("[process 0/2] failed" in survivor and "Gloo" in survivor) or "another task died" in survivor, \
        survivor[-3000:]
    complete = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    assert complete and complete[-1] >= 2
    assert sorted(p.name for p in (checkpoints / "2" / "data").glob("process_*")) == \
        ["process_0-of-2.json", "process_1-of-2.json"]

    # 2. The restart resumes from the last complete checkpoint and finishes: every loss is the reference's. Process 1
    # finishes 8 s after process 0 (tests/exit_race_runner.py): both still end with status 0.
    with start([*EXIT_RACE, *train_command(workdir)], dict(env, **UNEVEN_END), log) as group:
        wait_ok(group, timeout=400)
    assert_left_together(group)
    summaries = [json.loads(line) for i in range(2) for line in group.lines[i] if line.startswith('{"stage"')]
    assert summaries and all(s["resumed_from"] == complete[-1] and s["final_step"] == 4 for s in summaries)
    got = losses_by_step(workdir)
    assert sorted(got) == [1, 2, 3, 4]
    for step in got:
        assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-6), f"step {step}"

    # 3. The checkpoint written by 2 processes restores in this 1 process: the reference's parameters, optimiser
    # state and EMA, and an input pipeline at the same global batch.
    iterator_two = data_pipeline.make_dataset(data_config(reference.config), seed=int(reference.config.seed))
    iterator_one = data_pipeline.make_dataset(data_config(reference.config), seed=int(reference.config.seed))
    state_dir = workdir / "checkpoints" / "4" / "state"
    assert (state_dir / "ocdbt.process_0").is_dir() and (state_dir / "ocdbt.process_1").is_dir()
    from_two = _restore(workdir, 4, reference, iterator_two)
    from_one = _restore(reference_dir, 4, reference, iterator_one)
    kernel = from_two.params["denoiser"]["denoiser"]["fc_in"]["kernel"]
    assert kernel.sharding.spec[0] == "fsdp" and len(kernel.addressable_shards) == 8 and int(from_two.step) == 4
    for a, b in zip(jax.tree.leaves(host_tree((from_two.params, from_two.opt_state, from_two.ema))),
                    jax.tree.leaves(host_tree((from_one.params, from_one.opt_state, from_one.ema)))):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    assert iterator_two.batches == iterator_one.batches == 4
    np.testing.assert_array_equal(next(iterator_two)["path"], next(iterator_one)["path"])

    # 4. A checkpoint written by 1 process resumes on 2: the reference's workdir cut back to step 2.
    one_dir = tmp_path / "one_to_two"
    shutil.copytree(reference_dir / "checkpoints" / "2", one_dir / "checkpoints" / "2")
    with start(train_command(one_dir), env, log) as group:
        wait_ok(group, timeout=400)
    resumed = losses_by_step(one_dir)
    assert sorted(resumed) == [3, 4]
    for step in resumed:
        assert resumed[step] == pytest.approx(want[step], rel=1e-5, abs=1e-6), f"step {step}"
    # process 0 alone logged (one line per step), the others only warnings
    assert len(read_jsonl(one_dir / "metrics.jsonl")) == 2
    assert not any("compiled the toy step" in line for line in group.lines[1])
    assert any("compiled the toy step" in line for line in group.lines[0])


# ----------------------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------------------

PROMPTS = ["a dog barks in the distance", "rain falls on a tin roof|rain", "waves crash against rocks",
           "thunder rolls over the hills", "birds sing at dawn near a quiet river", "a cat purrs next to a warm fire"]


def test_sampling_splits_the_prompts_across_processes(tmp_path, env):
    from pipeline_fixtures import tiny_checkpoint

    sys.path.insert(0, str(ROOT))
    import sample

    folder, _ = tiny_checkpoint(tmp_path / "tiny", "text")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    common = ["--checkpoint", str(folder), "--prompts-file", str(prompts), "--duration", "0.36", "--steps", "2",
              "--guidance", "2.0", "--seed", "11", "--batch-size", "3", "--no-progress"]
    single = tmp_path / "single"
    sample.main([*common, "--out", str(single)])
    multi = tmp_path / "multi"
    # Process 1 finishes its share 8 s after process 0 (tests/exit_race_runner.py): both still end with status 0.
    with start([*EXIT_RACE, "sample.py", *common, "--out", str(multi)], dict(env, **UNEVEN_END),
               tmp_path / "sample_log.txt") as group:
        wait_ok(group, timeout=500)
    assert_left_together(group)
    assert "process 0 of 2: clips 0..2 of 6" in group.text(0)
    assert "process 1 of 2: clips 3..5 of 6" in group.text(1)
    assert any("wrote 6 clips" in line for line in group.lines[0])
    assert not any("wrote" in line for line in group.lines[1])  # totals from process 0 only

    stems = sorted(p.stem for p in single.glob("*.wav"))
    assert len(stems) == 6 and "0001_rain" not in stems and "rain" in stems
    assert sorted(p.name for p in multi.iterdir()) == sorted(p.name for p in single.iterdir())
    for stem in stems:
        ours, _ = soundfile.read(str(multi / f"{stem}.wav"), dtype="int16")
        ref, _ = soundfile.read(str(single / f"{stem}.wav"), dtype="int16")
        assert ours.shape == ref.shape == (5760,)
        assert np.abs(ours.astype(np.int32) - ref).max() <= 1, stem  # 16-bit: at most one rounding step apart
        assert json.loads((multi / f"{stem}.json").read_text()) == json.loads((single / f"{stem}.json").read_text())
    seeds = sorted(json.loads((multi / f"{s}.json").read_text())["seed"] for s in stems)
    assert seeds == list(range(11, 17))  # clip i: seed + i, as in one process
