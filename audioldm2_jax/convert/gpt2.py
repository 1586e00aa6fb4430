"""transformers GPT-2 (AudioLDM 2's ``language_model``) <-> ``GPT2Model`` here: its ``config.json`` <-> ``GPT2Config``,
its state dict (``model.safetensors``) <-> a bare Flax params tree (``wte``, ``wpe``, ``h_N``, ``ln_f``).

Keys map by the shared rule of :mod:`~audioldm2_jax.convert.weights` (``h.3.attn.c_attn.weight`` <->
``h_3/attn/c_attn/kernel``), except that every projection is an HF ``Conv1D``, stored ``(in, out)`` in both
frameworks (no transpose). ``GPT2Model`` and every class that nests it under ``transformer.`` (``GPT2LMHeadModel``,
``GPT2DoubleHeadsModel``, ``GPT2ForSequenceClassification``, ``GPT2ForTokenClassification``,
``GPT2ForQuestionAnswering``) read; their heads, the causal-mask buffers of older versions and, with
``add_cross_attention``, the cross-attention layers (never run by AudioLDM 2) are skipped. ``GPT2LMHeadModel``'s keys
are written.
"""

from __future__ import annotations

from typing import Mapping

import jax
import numpy as np

from audioldm2_jax.convert.weights import StateDict, convert_state_dict, params_to_state_dict
from audioldm2_jax.models.gpt2 import GPT2Config, GPT2Model, gpt2_dummy_inputs

# torch ModuleLists of GPT2Model (`h.3.attn...`); `ln_1` / `ln_2` are attribute names.
CONTAINERS = frozenset({"h"})
# Causal-mask buffers that older transformers versions saved beside the weights.
_BUFFERS = (".attn.bias", ".attn.masked_bias")
# Heads of the GPT-2 classes: none is used for LOA generation (lm_head is tied to wte anyway).
_HEADS = ("lm_head.", "multiple_choice_head.", "score.", "classifier.", "qa_outputs.")
# Cross-attention layers (add_cross_attention=true) run only on encoder states, which AudioLDM 2 never passes.
_CROSS_ATTENTION = (".crossattention.", ".ln_cross_attn.")


def gpt2_param_shapes(config: GPT2Config):
    return jax.eval_shape(GPT2Model(config).init, jax.random.key(0), *gpt2_dummy_inputs(config))["params"]


def _renamer(config: GPT2Config):
    def rename(key: str) -> str | None:
        if key.startswith(_HEADS):
            return None
        if key.startswith("transformer."):
            key = key[len("transformer."):]
        if key.endswith(_BUFFERS):
            return None
        if config.add_cross_attention and any(part in key for part in _CROSS_ATTENTION):
            return None
        return key

    return rename


def _keep_conv1d_layout(path: tuple[str, ...], value: np.ndarray) -> np.ndarray | None:
    # Every GPT-2 projection is an HF Conv1D, whose weight is stored (in, out) already: no transpose.
    return np.asarray(value) if path[-1] == "kernel" else None


def config_from_json(d: dict) -> GPT2Config:
    """A transformers ``config.json`` dict -> ``GPT2Config`` (``ValueError`` naming the key when it is not usable)."""
    return GPT2Config.from_transformers(d)


def config_to_json(config: GPT2Config) -> dict:
    """The ``config.json`` of the ``GPT2LMHeadModel`` with exactly this model (``GPT2Config.to_transformers``)."""
    return config.to_transformers()


def to_flax(state_dict: Mapping[str, np.ndarray], config: GPT2Config, source: str = "GPT-2") -> dict:
    """A state dict of any GPT-2 class -> the bare ``GPT2Model`` params tree (``wte``, ``wpe``, ``h_N``, ``ln_f``);
    ``CheckpointError`` naming every missing, unexpected or misshaped key."""
    return convert_state_dict(state_dict, gpt2_param_shapes(config), source=source, rename=_renamer(config),
                              transform=_keep_conv1d_layout)


def _cross_attention_placeholders(config: GPT2Config) -> StateDict:
    """With ``add_cross_attention`` the reference holds cross-attention layers that run only on encoder states,
    which AudioLDM 2 never passes, so they have no weights here. They are written as a layer that adds nothing
    (zero projections, identity norm) rather than left for transformers to initialise at random."""
    d, out = config.n_embd, {}
    for i in range(config.n_layer):
        prefix = f"transformer.h.{i}."
        out.update({
            prefix + "crossattention.c_attn.weight": np.zeros((d, 2 * d), np.float32),
            prefix + "crossattention.c_attn.bias": np.zeros((2 * d,), np.float32),
            prefix + "crossattention.q_attn.weight": np.zeros((d, d), np.float32),
            prefix + "crossattention.q_attn.bias": np.zeros((d,), np.float32),
            prefix + "crossattention.c_proj.weight": np.zeros((d, d), np.float32),
            prefix + "crossattention.c_proj.bias": np.zeros((d,), np.float32),
            prefix + "ln_cross_attn.weight": np.ones((d,), np.float32),
            prefix + "ln_cross_attn.bias": np.zeros((d,), np.float32),
        })
    return out


def to_torch(params, config: GPT2Config) -> StateDict:
    """``GPT2Model`` params -> the state dict ``GPT2LMHeadModel.save_pretrained`` writes: ``transformer.*`` keys
    (``lm_head.weight`` is tied to ``transformer.wte.weight`` and not stored), Conv1D kernels as they are
    (``(in, out)`` in both frameworks), float32."""
    out = params_to_state_dict(params, CONTAINERS, rename=lambda key: "transformer." + key,
                               transform=_keep_conv1d_layout)
    if config.add_cross_attention:
        out.update(_cross_attention_placeholders(config))
    return out
