"""Trains one stage of AudioLDM 2.

    python train.py --config configs/quickstart.py:ldm --workdir runs/quickstart/ldm
    python train.py --config configs/audioldm2_base.py:ldm --workdir gs://bucket/ldm --config.batch_size=256

``--config`` is an ml_collections config file (optionally ``:arg``, passed to its ``get_config``); any key can be
overridden on the command line (``--config.optimizer.learning_rate=3e-4``); unknown keys are errors. A workdir that
holds checkpoints is resumed from its latest complete step. SIGTERM saves a checkpoint and exits with status 0.
Multi-host launches (SLURM, TPU pods, ``JAX_COORDINATOR_ADDRESS``) initialise ``jax.distributed`` by themselves, and
all their processes leave together at the end (``audioldm2_jax.parallel.distributed.shutdown``).
"""

from __future__ import annotations

import json
import logging
import sys

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py[:arg]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the export.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src", "orbax", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from audioldm2_jax.train.config import ConfigError
    from audioldm2_jax.train.loop import NonFiniteError, train

    try:
        summary = train(flags.FLAGS.config, flags.FLAGS.workdir)
    except (ConfigError, NonFiniteError) as err:
        logging.getLogger("train").error("%s", err)
        sys.exit(2)
    import jax

    if jax.process_index() == 0:  # one summary per run, not per process
        print(json.dumps({k: v for k, v in summary.items() if k != "last_metrics"}, default=str))
    if summary.get("preempted"):
        logging.getLogger("train").warning("preempted at step %s: checkpoint saved, exiting cleanly",
                                           summary.get("final_step"))
    from audioldm2_jax.parallel import distributed as dist

    dist.shutdown()  # multi-process: every process leaves together, the coordination service last


if __name__ == "__main__":
    app.run(main)
