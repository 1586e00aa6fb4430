"""Trains one stage of AudioLDM 2 (``train.py`` at the repository root, the ``audioldm2-train`` command).

    python train.py --config configs/quickstart.py:ldm --workdir runs/quickstart/ldm
    python train.py --config configs/audioldm2_base.py:ldm --workdir gs://bucket/ldm --config.batch_size=256

``--config`` is an ml_collections config file (optionally ``:arg``, passed to its ``get_config``); ``configs/<name>.py``
names the packaged file (``audioldm2_jax/configs/``) from any directory unless such a file exists there; any key can be
overridden on the command line (``--config.optimizer.learning_rate=3e-4``); unknown keys are errors. A workdir that
holds checkpoints is resumed from its latest complete step. SIGTERM saves a checkpoint and exits with status 0.
Multi-host launches (SLURM, TPU pods, ``JAX_COORDINATOR_ADDRESS``) initialise ``jax.distributed`` by themselves, and
all their processes leave together at the end (``audioldm2_jax.parallel.distributed.shutdown``).
"""

from __future__ import annotations

import json
import logging
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from audioldm2_jax.parallel import distributed as dist
from audioldm2_jax.train.config import ConfigError, resolve_config_spec
from audioldm2_jax.train.loop import NonFiniteError, train

config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py[:arg]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the export.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src", "orbax", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        summary = train(flags.FLAGS.config, flags.FLAGS.workdir)
    except (ConfigError, NonFiniteError) as err:
        logging.getLogger("train").error("%s", err)
        sys.exit(2)
    if jax.process_index() == 0:  # one summary per run, not per process
        print(json.dumps({k: v for k, v in summary.items() if k != "last_metrics"}, default=str))
    if summary.get("preempted"):
        logging.getLogger("train").warning("preempted at step %s: checkpoint saved, exiting cleanly",
                                           summary.get("final_step"))
    dist.shutdown()  # multi-process: every process leaves together, the coordination service last


def _config_argv(argv: list[str]) -> list[str]:
    """``argv`` with the ``--config`` path resolved (:func:`audioldm2_jax.train.config.resolve_config_path`)."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--":
            break
        if arg in ("--config", "-config") and i + 1 < len(out):
            out[i + 1] = resolve_config_spec(out[i + 1])
        elif arg.startswith(("--config=", "-config=")):
            flag, _, value = arg.partition("=")
            out[i] = f"{flag}={resolve_config_spec(value)}"
    return out


def _parse_flags(argv: list[str]):
    try:
        argv = _config_argv(argv)
    except FileNotFoundError as err:
        sys.exit(f"error: {err}")
    return app.parse_flags_with_usage(argv)


def run() -> None:
    """The command-line entry point."""
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
