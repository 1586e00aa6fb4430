"""AudioMAE pretraining step: masked-patch reconstruction loss and its gradients, jitted and sharded on a mesh.

``mae_loss_and_grads`` is the pure function (parameters, batch, rng) -> (loss, grads); ``build_mae_step`` compiles it
for a mesh with the project's logical-axis rules: parameters sharded as their logical names say, the batch split
over the data-parallel axes, the rng replicated. The optimizer update belongs to the training loop.

The rng is split into the ``masking`` stream (which patches are hidden, per sample) and the ``dropout`` stream
(the local decoder's position-bias MLP). Random draws have the same values whatever the sharding, so a step on a
mesh computes the same loss and gradients as on one device.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from audioldm2_jax.models.audiomae import AudioMAEConfig, MaskedAutoencoder
from audioldm2_jax.parallel.partitioning import DEFAULT_RULES, LogicalRules, batch_sharding, logical_to_shardings

Batch = Mapping[str, jax.Array] | jax.Array


def _fbank(batch: Batch) -> jax.Array:
    return batch["fbank"] if isinstance(batch, Mapping) else batch


def mae_loss(params, batch: Batch, rng: jax.Array, *, model: MaskedAutoencoder) -> tuple[jax.Array, dict]:
    """Masked-patch loss of ``batch`` (``{"fbank": [B, T, F]}`` or the fbank itself) -> ``(loss, aux)`` with
    ``aux = {"mask": [B, L]}``. Training mode: random masking at the config's ratio, dropout on."""
    mask_rng, dropout_rng = jax.random.split(rng)
    out = model.apply({"params": params}, _fbank(batch), deterministic=False,
                      rngs={"masking": mask_rng, "dropout": dropout_rng})
    return out["loss"], {"mask": out["mask"]}


def mae_loss_and_grads(params, batch: Batch, rng: jax.Array, *, model: MaskedAutoencoder) -> tuple[jax.Array, Any]:
    """``(loss, grads)``: grads has the structure of ``params``."""
    (loss, _), grads = jax.value_and_grad(mae_loss, has_aux=True)(params, batch, rng, model=model)
    return loss, grads


@dataclasses.dataclass(frozen=True)
class ShardedMAEStep:
    """A pretraining step compiled for ``mesh``.

    ``step(params, batch, rng) -> (loss, grads)`` (grads sharded like the parameters); ``init(rng)`` makes
    parameters born sharded (jitted with ``out_shardings``, never whole on one device); ``param_shardings`` /
    ``batch_sharding`` place host data (``partitioning.place``).
    """

    model: MaskedAutoencoder
    mesh: jax.sharding.Mesh
    rules: LogicalRules
    param_shardings: Any
    batch_sharding: NamedSharding
    init: Callable
    _compiled: Callable

    def step(self, params, batch: Batch, rng: jax.Array):
        # Logical constraints inside the model resolve against the mesh and rules active while tracing.
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            return self._compiled(params, batch, rng)

    __call__ = step


def _init_fn(model: MaskedAutoencoder) -> Callable:
    c = model.config

    def init(rng):
        fbank = jnp.zeros((1, c.input_frames, c.mel_bins), jnp.float32)
        return model.init({"params": rng}, fbank, jnp.zeros((1, c.num_patches), jnp.float32))["params"]

    return init


def build_mae_step(config: AudioMAEConfig, mesh: jax.sharding.Mesh, rules: LogicalRules = DEFAULT_RULES, *,
                   dtype=jnp.float32, param_dtype=jnp.float32) -> ShardedMAEStep:
    """The jitted, sharded ``(params, batch, rng) -> (loss, grads)`` for ``config`` on ``mesh``.

    The global batch size must be divisible by the product of the mesh axes that ``act_batch`` maps to.
    """
    model = MaskedAutoencoder(config, dtype=dtype, param_dtype=param_dtype)
    # Shapes outside the mesh context: boxed parameters would otherwise try to constrain abstract values.
    abstract = jax.eval_shape(_init_fn(model), jax.random.key(0))
    param_shardings = logical_to_shardings(abstract, mesh, rules)
    data = batch_sharding(mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())

    def loss_and_grads(params, batch, rng):
        return mae_loss_and_grads(params, batch, rng, model=model)

    compiled = jax.jit(loss_and_grads, in_shardings=(param_shardings, data, replicated),
                       out_shardings=(replicated, param_shardings))
    init_fn = _init_fn(model)
    init = jax.jit(lambda rng: nn.unbox(init_fn(rng)), out_shardings=param_shardings)
    return ShardedMAEStep(model, mesh, tuple(rules), param_shardings, data, init, compiled)
