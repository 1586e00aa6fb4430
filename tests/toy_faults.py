"""Faults injected into the ``toy`` training stage for the loop's tests; not part of the package, so the production
config carries no test knobs.

``config.stage = STAGE`` trains :class:`FaultyToyStage`, the toy stage plus what the environment asks for:

- ``TOY_NAN_STEPS="start,stop"``: the first group's loss is NaN on the steps ``[start, stop)`` (the loop must skip
  and count those updates, and stop the run after ``max_consecutive_nonfinite`` of them in a row);
- ``TOY_SLEEP_SECONDS="s"``: every batch is ``s`` seconds late (a run slow enough to be killed or preempted mid-way).

Environment variables reach ``train.py`` subprocesses and every process of a multi-process launch;
:func:`environment` adds them, with this folder on ``PYTHONPATH`` so that ``STAGE`` imports there too.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Mapping

import jax.numpy as jnp

from audioldm2_jax.train.stages.toy import ToyStage

STAGE = "toy_faults:FaultyToyStage"
NAN_STEPS = "TOY_NAN_STEPS"
SLEEP_SECONDS = "TOY_SLEEP_SECONDS"


def environment(base: Mapping[str, str], nan_steps: tuple[int, int] | None = None,
                sleep_seconds: float | None = None) -> dict[str, str]:
    """``base`` plus the fault settings and this folder on ``PYTHONPATH``, for subprocesses that train ``STAGE``."""
    env = dict(base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parent), env.get("PYTHONPATH"))
                                        if p)
    if nan_steps is not None:
        env[NAN_STEPS] = f"{int(nan_steps[0])},{int(nan_steps[1])}"
    if sleep_seconds is not None:
        env[SLEEP_SECONDS] = str(float(sleep_seconds))
    return env


class FaultyToyStage(ToyStage):
    def __init__(self, config, dtype=jnp.float32):
        super().__init__(config, dtype)
        nan = os.environ.get(NAN_STEPS, "")
        try:
            self.nan_range = tuple(int(v) for v in nan.split(",")) if nan else None
        except ValueError:
            self.nan_range = ()
        if self.nan_range is not None and len(self.nan_range) != 2:
            raise ValueError(f"{NAN_STEPS}={nan!r} must be two integers 'start,stop'")
        self.sleep = float(os.environ.get(SLEEP_SECONDS, "0") or 0)
        if not self.sleep >= 0:
            raise ValueError(f"{SLEEP_SECONDS}={self.sleep} must be a number of seconds >= 0")

    def host_batch(self, batch):
        if self.sleep:
            time.sleep(self.sleep)
        return super().host_batch(batch)

    def loss(self, group, params, frozen, extras, batch, rng, step, options):
        loss, aux = super().loss(group, params, frozen, extras, batch, rng, step, options)
        if group == "denoiser" and self.nan_range is not None:
            loss = jnp.where((step >= self.nan_range[0]) & (step < self.nan_range[1]), jnp.nan, loss)
        return loss, aux
