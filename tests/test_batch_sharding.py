"""Which mesh axes carry the batch is read from one place, the ``act_batch`` logical-axis rule
(``parallel/partitioning.py``): overriding it moves the trainer's batch sharding, the rows each process loads and
the config's batch-size check together. Simulated CPU devices (tests/conftest.py), the tiny ``toy`` stage."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from audioldm2_jax.data.pipeline import make_dataset
from audioldm2_jax.parallel.partitioning import (DEFAULT_RULES, batch_axes, batch_size_divisor, batch_sharding,
                                                 make_mesh, process_batch_rows)
from audioldm2_jax.train import config as config_lib
from audioldm2_jax.train.loop import Trainer, data_config

MESH = {"data": 2, "fsdp": 2, "tensor": 1}


def _config(batch_size, rules=()):
    c = config_lib.load_config_file("configs/smoke.py")
    c.log.progress_bar = False
    c.log.tensorboard = False
    c.data.procedural_clips = 8
    c.batch_size = batch_size
    c.logical_axis_rules = list(rules)
    c.mesh.update(MESH)
    return c


def test_batch_axes_follow_the_act_batch_rule_and_the_mesh():
    assert batch_axes(DEFAULT_RULES, MESH) == ("data", "fsdp")
    assert batch_axes(DEFAULT_RULES, {"data": 4, "tensor": 2}) == ("data",)  # axes the mesh lacks are dropped
    assert batch_size_divisor(DEFAULT_RULES, {"data": 4, "fsdp": 2, "tensor": 2}) == 8
    rules = [(n, "fsdp" if n == "act_batch" else a) for n, a in DEFAULT_RULES]
    assert batch_axes(rules, MESH) == ("fsdp",) and batch_size_divisor(rules, MESH) == 2
    none = [(n, None if n == "act_batch" else a) for n, a in DEFAULT_RULES]
    assert batch_axes(none, MESH) == () and batch_size_divisor(none, MESH) == 1
    mesh = make_mesh(MESH, devices=jax.devices()[:4])
    assert batch_sharding(mesh, DEFAULT_RULES).spec == PartitionSpec(("data", "fsdp"))
    assert batch_sharding(mesh, none).spec == PartitionSpec(None)


def test_overriding_act_batch_moves_trainer_loader_and_validation_together(tmp_path):
    """Batch over ``data`` only on a data 2 x fsdp 2 mesh: a batch of 2 is valid (it is not under the default rule,
    data x fsdp = 4), the trainer splits it over ``data`` (each fsdp pair of devices holds the same row), and a
    process owning one device loads the row its device holds, the same for both devices of a data index."""
    devices = jax.devices()[:4]
    with pytest.raises(config_lib.ConfigError, match=r"batch_size=2 is not divisible by the batch axes data x fsdp"
                                                     r" = 4"):
        config_lib.validate(_config(2), 4, 1)
    config = _config(2, [("act_batch", "data")])
    config_lib.validate(config, 4, 1)
    with pytest.raises(config_lib.ConfigError, match=r"batch_size=3 is not divisible by the batch axes data = 2"):
        config_lib.validate(_config(3, [("act_batch", "data")]), 4, 1)

    trainer = Trainer.build(config, tmp_path, devices=devices)
    assert trainer.batch_sharding.spec == PartitionSpec("data")
    default = Trainer.build(_config(4), tmp_path / "default", devices=devices)
    assert default.batch_sharding.spec == PartitionSpec(("data", "fsdp"))

    # the rows one process loads when it owns one device (4 simulated processes): its device's batch shard
    grid = trainer.mesh.devices  # [data, fsdp, tensor]
    for i in range(2):
        for j in range(2):
            device = grid[i, j, 0]
            assert process_batch_rows(trainer.batch_sharding, 2, [device]) == (i, i + 1)
            assert process_batch_rows(default.batch_sharding, 4, [device]) == (2 * i + j, 2 * i + j + 1)
    assert process_batch_rows(trainer.batch_sharding, 2) == (0, 2)  # this process holds every device

    whole = next(make_dataset(data_config(config), 0, 1, seed=3))
    for i in range(2):
        rows = process_batch_rows(trainer.batch_sharding, 2, [grid[i, 1, 0]])
        share = next(make_dataset(data_config(config), i, 2, seed=3, rows=rows))
        np.testing.assert_array_equal(share["log_mel"], whole["log_mel"][i:i + 1])
        assert list(share["path"]) == list(whole["path"][i:i + 1])

    # the trainer places each data index's row on both devices of that index
    host = trainer.stage.host_batch(whole)
    placed = {k: v for k, v in trainer.device_batch(whole).items() if isinstance(v, jax.Array)}
    assert sorted(placed) == ["log_mel"]
    for name, array in placed.items():
        assert array.sharding.spec == PartitionSpec("data"), name
        for shard in array.addressable_shards:
            i = int(np.argwhere(grid == shard.device)[0][0])
            np.testing.assert_array_equal(np.asarray(shard.data), np.asarray(host[name])[i:i + 1], err_msg=name)
