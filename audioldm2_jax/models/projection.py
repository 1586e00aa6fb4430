"""AudioLDM 2's projection model (diffusers' ``AudioLDM2ProjectionModel``): maps the two text-encoder streams
(CLAP ``[B, L0, 512]`` and T5 ``[B, L1, 1024]``, or VITS phonemes for the speech models) to GPT-2's width, frames
each with its own learned SOS / EOS embedding and concatenates them into GPT-2's prompt.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from audioldm2_jax.models.layers import dense
from audioldm2_jax.parallel.partitioning import constrain, with_axes

Dtype = Any


@dataclasses.dataclass(frozen=True)
class ProjectionConfig:
    text_encoder_dim: int = 512  # CLAP
    text_encoder_1_dim: int = 1024  # T5 (or VITS for the speech models)
    language_model_dim: int = 768  # GPT-2
    # Speech models: a learned [max_seq_length, text_encoder_1_dim] table is added to the second stream (whose
    # length must then be exactly max_seq_length: the VITS tokenizer pads to it).
    use_learned_position_embedding: bool = False
    max_seq_length: int | None = None

    def __post_init__(self):
        for key in ("text_encoder_dim", "text_encoder_1_dim", "language_model_dim"):
            value = getattr(self, key)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"projection config: {key}={value!r} must be a positive integer")
        if self.use_learned_position_embedding and (not isinstance(self.max_seq_length, int)
                                                    or self.max_seq_length <= 0):
            raise ValueError(f"projection config: use_learned_position_embedding needs a positive max_seq_length, "
                             f"got {self.max_seq_length!r}")

    @classmethod
    def from_diffusers(cls, d: dict) -> "ProjectionConfig":
        """From an ``AudioLDM2ProjectionModel`` ``config.json`` dict (diffusers spells it ``langauge_model_dim``)."""
        for key in ("text_encoder_dim", "text_encoder_1_dim", "langauge_model_dim"):
            if key not in d:
                raise ValueError(f"projection config: missing {key}")
        # The reference enables the table whenever the key is not None (even `false`), so the same rule decides
        # whether the checkpoint holds it.
        learned = d.get("use_learned_position_embedding") is not None
        return cls(text_encoder_dim=d["text_encoder_dim"], text_encoder_1_dim=d["text_encoder_1_dim"],
                   language_model_dim=d["langauge_model_dim"], use_learned_position_embedding=learned,
                   max_seq_length=d.get("max_seq_length"))


def _frame(x: jax.Array, mask: jax.Array | None, sos: jax.Array, eos: jax.Array):
    """``[B, L, D]`` -> ``[B, L + 2, D]`` with SOS first and EOS last; the mask gains a 1 at both ends."""
    batch = x.shape[0]
    ends = lambda e: jnp.broadcast_to(e.astype(x.dtype), (batch, 1, x.shape[-1]))
    x = jnp.concatenate([ends(sos), x, ends(eos)], axis=1)
    if mask is not None:
        mask = jnp.asarray(mask)
        one = jnp.ones((batch, 1), mask.dtype)
        mask = jnp.concatenate([one, mask, one], axis=1)
    return x, mask


class AudioLDM2ProjectionModel(nn.Module):
    """``(hidden_states [B, L0, C0], hidden_states_1 [B, L1, C1], attention_mask [B, L0], attention_mask_1 [B, L1])``
    -> ``(hidden_states [B, L0 + L1 + 4, D], attention_mask [B, L0 + L1 + 4] | None)``.

    When only one mask is given the other stream counts as unpadded (the reference intends this but its code for
    that case is broken); with neither, the returned mask is None.
    """

    config: ProjectionConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, hidden_states, hidden_states_1, attention_mask=None, attention_mask_1=None):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        dim = cfg.language_model_dim
        ones_init = with_axes(nn.initializers.ones_init(), ("embed",))
        sos, eos = (self.param(n, ones_init, (dim,), self.param_dtype) for n in ("sos_embed", "eos_embed"))
        sos_1, eos_1 = (self.param(n, ones_init, (dim,), self.param_dtype) for n in ("sos_embed_1", "eos_embed_1"))

        if cfg.use_learned_position_embedding:
            table = self.param("learnable_positional_embedding",
                               with_axes(nn.initializers.zeros_init(), ("position", "embed")),
                               (cfg.max_seq_length, cfg.text_encoder_1_dim), self.param_dtype)
            if hidden_states_1.shape[1] != cfg.max_seq_length:
                raise ValueError(f"projection: the second stream has length {hidden_states_1.shape[1]}; the learned "
                                 f"position table needs exactly max_seq_length={cfg.max_seq_length}")
            hidden_states_1 = hidden_states_1 + table.astype(hidden_states_1.dtype)[None]

        x = dense(dim, (None, "embed"), name="projection", **kw)(hidden_states)
        x, mask = _frame(x, attention_mask, sos, eos)
        x1 = dense(dim, (None, "embed"), name="projection_1", **kw)(hidden_states_1)
        x1, mask_1 = _frame(x1, attention_mask_1, sos_1, eos_1)

        out = constrain(jnp.concatenate([x, x1], axis=1), ("act_batch", "act_length", "act_embed"))
        if mask is None and mask_1 is None:
            return out, None
        if mask is None:
            mask = jnp.ones(x.shape[:2], mask_1.dtype)
        if mask_1 is None:
            mask_1 = jnp.ones(x1.shape[:2], mask.dtype)
        return out, jnp.concatenate([mask, mask_1], axis=1)


def projection_dummy_inputs(config: ProjectionConfig, batch: int = 1, length: int = 4):
    """Inputs for ``init`` / ``eval_shape``: ``(hidden_states, hidden_states_1, attention_mask, attention_mask_1)``."""
    length_1 = config.max_seq_length if config.use_learned_position_embedding else length
    return (jnp.zeros((batch, 1, config.text_encoder_dim), jnp.float32),
            jnp.zeros((batch, length_1, config.text_encoder_1_dim), jnp.float32),
            jnp.ones((batch, 1), jnp.int32), jnp.ones((batch, length_1), jnp.int32))
