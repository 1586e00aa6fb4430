"""A smoke test of the training system (mesh, sharded state, checkpoints, preemption, logging) with the tiny
``toy`` stage: compiles in seconds on any machine.

    python train.py --config configs/smoke.py --workdir /tmp/smoke
    python train.py --config configs/smoke.py --workdir /tmp/smoke --config.mesh.data=2 --config.mesh.tensor=4
"""

from audioldm2_jax.configs import common


def get_config(arg: str = ""):
    del arg
    c = common.base_config()
    c.stage = "toy"
    common.cpu_run(c)
    common.procedural_data(c, 0.64, clips=64)
    c.data.compute_fbank = False
    c.num_steps = 20
    c.batch_size = 8
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = 2
    c.ema.decay = 0.9
    c.checkpoint.every_steps = 5
    c.checkpoint.keep = 2
    c.log.every_steps = 1
    return c
