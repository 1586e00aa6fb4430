"""What every sampler shares: a static plan computed on the host and a pure, traceable step.

A sampler is built once per (config, number of steps). Its ``timesteps`` are the training timesteps at which the
denoiser is evaluated, in order; step ``i`` of the loop evaluates the model at ``timesteps[i]`` and calls
``step(state, model_output, i, sample, key)``. The per-step scalars (square roots of cumulative alphas, solver
coefficients) are float32 tables indexed by ``i``, so ``step`` works with a traced ``i`` inside
``lax.fori_loop`` / ``lax.scan`` and costs a handful of elementwise ops.

The scalar coefficients are computed in float64 from the float32 schedule tables and rounded once. diffusers
computes them with float32 torch scalars, whose ``sqrt`` / ``log`` / ``exp`` on CPU are not correctly rounded,
so its coefficients can sit one float32 ulp away from ours; the tensor arithmetic follows diffusers' order of
operations so that nothing else adds to the difference.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def as_table(values) -> np.ndarray:
    """A float64 host array rounded to the float32 table the step indexes."""
    return np.asarray(values, np.float64).astype(np.float32)


def lookup(table: np.ndarray, step_index):
    """``table[step_index]`` for a host table and a (possibly traced) integer index: float32 scalar."""
    return jnp.asarray(table)[step_index]


def compute_dtype(sample):
    """Steps run in at least float32, whatever the latents' dtype."""
    return jnp.promote_types(jnp.result_type(sample), jnp.float32)


def in_compute_dtype(sample, model_output):
    """``(sample, model_output, out_dtype)``: both cast to :func:`compute_dtype`, and the dtype a step returns its
    sample in (the incoming sample's)."""
    dtype = compute_dtype(sample)
    return sample.astype(dtype), model_output.astype(dtype), jnp.result_type(sample)


@dataclasses.dataclass(frozen=True, eq=False)
class Sampler:
    """Base class. Subclasses set ``timesteps`` (int32 ``[S]``) and implement ``init_state`` and ``step``.

    ``eq=False`` keeps instances hashable by identity, so a sampler can be a static argument of ``jax.jit``.
    """

    name: str
    timesteps: np.ndarray
    prediction_type: str

    #: Standard deviation of the initial latents (all samplers here start from unit Gaussian noise).
    init_noise_sigma: float = 1.0

    @property
    def num_steps(self) -> int:
        """Number of denoiser evaluations (loop iterations); may exceed the requested step count (PNDM)."""
        return int(self.timesteps.shape[0])

    def scale_model_input(self, sample, step_index):
        """The denoiser's input at step ``step_index``: the sample itself for these samplers."""
        del step_index
        return sample

    def init_state(self, sample) -> Any:
        """The solver's carried state for latents shaped like ``sample`` (a pytree of arrays)."""
        raise NotImplementedError

    def step(self, state, model_output, step_index, sample, key: jax.Array | None = None):
        """One solver step: ``(prev_sample, new_state)``, ``prev_sample`` shaped and typed like ``sample``."""
        raise NotImplementedError
