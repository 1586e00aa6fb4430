"""The train state: trainable parameters, optimizer states and EMA copies per parameter group, the step, and the
counters of skipped (non-finite) updates; created sharded on the mesh, never whole on one device.

A stage trains one or more parameter *groups* (one for most stages; "generator" and "discriminator" for the GAN
stages), each with its own optax optimizer and its own loss. ``extras`` holds run-level values that are neither
trained nor frozen but must survive a restart (the latent scale found from data).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from audioldm2_jax.parallel.partitioning import logical_to_shardings
from audioldm2_jax.train import config as config_lib

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """``params`` / ``opt_state`` / ``ema``: dicts keyed by group name (``ema`` is ``{}`` without EMA).

    ``skipped`` counts updates dropped for a non-finite loss or gradient, ``consecutive_skipped`` those since the
    last good update (the loop stops the run when it grows too long).
    """

    step: jax.Array
    params: dict
    opt_state: dict
    ema: dict
    extras: dict
    skipped: jax.Array
    consecutive_skipped: jax.Array


def make_optimizer(opt: Mapping, num_steps: int) -> tuple[optax.GradientTransformation, Callable]:
    """AdamW with global-norm clipping and the section's learning-rate schedule: ``(transformation, schedule)``.

    Weight decay skips 1-D parameters (norm scales, biases), as is customary for transformers and UNets.
    """
    schedule = config_lib.learning_rate_at(opt, num_steps)
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
    parts = []
    if opt["grad_clip_norm"] and float(opt["grad_clip_norm"]) > 0:
        parts.append(optax.clip_by_global_norm(float(opt["grad_clip_norm"])))
    parts.append(optax.adamw(schedule, b1=float(opt["b1"]), b2=float(opt["b2"]), eps=float(opt["eps"]),
                             weight_decay=float(opt["weight_decay"]), mask=decay_mask))
    return optax.chain(*parts), schedule


def ema_decay_at(decay: float, step, warmup: bool):
    """EMA decay at ``step``; with ``warmup`` it ramps as ``(1 + s) / (10 + s)`` so early averages are not stuck
    at the random initialisation."""
    if not warmup:
        return jnp.asarray(decay, jnp.float32)
    s = jnp.asarray(step, jnp.float32)
    return jnp.minimum(jnp.asarray(decay, jnp.float32), (1.0 + s) / (10.0 + s))


def init_train_state(params: dict, optimizers: Mapping[str, optax.GradientTransformation], use_ema: bool,
                     extras: Mapping | None = None) -> TrainState:
    """A fresh state around ``params`` (``{group: tree}``)."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state={g: optimizers[g].init(params[g]) for g in params},
        ema={g: jax.tree.map(jnp.copy, params[g]) for g in params} if use_ema else {},
        extras=dict(extras or {}),
        skipped=jnp.zeros((), jnp.int32),
        consecutive_skipped=jnp.zeros((), jnp.int32),
    )


def state_shardings(abstract_boxed_params: dict, optimizers: Mapping[str, optax.GradientTransformation],
                    use_ema: bool, extras: Mapping, mesh: jax.sharding.Mesh, rules) -> tuple[TrainState, TrainState]:
    """``(abstract_state, shardings)`` for parameters given as boxed (logically partitioned) abstract trees.

    Optimizer moments are sharded like their parameters (``optax.tree_map_params``); counters and scalars are
    replicated.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    with nn.logical_axis_rules(rules):
        param_sh = {g: logical_to_shardings(tree, mesh, rules) for g, tree in abstract_boxed_params.items()}
    abstract_params = nn.unbox(abstract_boxed_params)
    abstract = jax.eval_shape(lambda p: init_train_state(p, optimizers, use_ema, extras), abstract_params)

    def opt_sh(group):
        return optax.tree_map_params(optimizers[group], lambda _, s: s, abstract.opt_state[group], param_sh[group],
                                     transform_non_params=lambda _: replicated,
                                     is_leaf=lambda x: isinstance(x, NamedSharding))

    shardings = TrainState(
        step=replicated, params=param_sh, opt_state={g: opt_sh(g) for g in param_sh},
        ema=dict(param_sh) if use_ema else {}, extras=jax.tree.map(lambda _: replicated, abstract.extras),
        skipped=replicated, consecutive_skipped=replicated)
    return abstract, shardings


def state_from_params(params: dict, optimizers: Mapping[str, optax.GradientTransformation], use_ema: bool,
                      extras: Mapping, shardings: TrainState, mesh: jax.sharding.Mesh) -> TrainState:
    """A fresh state around given (already placed) parameters, e.g. weights loaded from a pretrained checkpoint."""
    with jax.set_mesh(mesh):
        return jax.jit(lambda p: init_train_state(p, optimizers, use_ema, extras), out_shardings=shardings,
                       in_shardings=(shardings.params,))(params)
