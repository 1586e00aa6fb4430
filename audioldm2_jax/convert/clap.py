"""transformers ``ClapModel`` checkpoint (the ``text_encoder`` folder of AudioLDM 2, laion/clap-htsat-unfused or
laion/clap-htsat-fused) -> ``(ClapConfig, params)`` for ``models.clap.ClapModel``."""

from __future__ import annotations

import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from audioldm2_jax.convert.weights import CheckpointError, convert_state_dict, find_weights, load_state_dict, \
    read_config, resolve_checkpoint
from audioldm2_jax.models.clap import ClapConfig, ClapModel

# Buffers the reference saves that are recomputed here (position / token-type ids, Swin's relative position
# index) and BatchNorm's step counter.
_DERIVED_BUFFERS = (
    "text_model.embeddings.position_ids",
    "text_model.embeddings.token_type_ids",
)
_DERIVED_SUFFIXES = (".relative_position_index", ".num_batches_tracked")


def _rename(key: str) -> str | None:
    if key in _DERIVED_BUFFERS or key.endswith(_DERIVED_SUFFIXES):
        return None
    return key


def abstract_params(config: ClapConfig):
    """Shapes of the Flax parameter tree (no arrays are allocated)."""
    model = ClapModel(config)
    ids = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    # Initialisation takes the audio shapes from the config alone (also for configs whose audio tower cannot run).
    feats = jax.ShapeDtypeStruct((1, 1, 1, config.audio.num_mel_bins), jnp.float32)
    return jax.eval_shape(lambda i, f: model.init(jax.random.PRNGKey(0), i, jnp.ones_like(i), f), ids, feats)


def convert_clap_state_dict(state_dict: Mapping[str, np.ndarray], config: ClapConfig,
                            source: str = "CLAP checkpoint") -> dict:
    """A ``ClapModel`` state dict -> Flax params ``{"params": ...}``; raises ``CheckpointError`` naming every missing,
    unexpected or misshaped key."""
    tree = convert_state_dict(state_dict, abstract_params(config), source=source, rename=_rename)
    return {"params": tree}


def load_clap(folder_or_hub_id: str | os.PathLike, config: ClapConfig | None = None) -> tuple[ClapConfig, dict]:
    """Reads ``config.json`` and the weights of a transformers ``ClapModel`` folder (both branches)."""
    folder = resolve_checkpoint(folder_or_hub_id)
    if config is None:
        try:
            config = ClapConfig.from_transformers(read_config(folder))
        except ValueError as err:
            if isinstance(err, CheckpointError):
                raise
            raise CheckpointError(f"{folder / 'config.json'}: {err}") from err
    weights = find_weights(folder)
    return config, convert_clap_state_dict(load_state_dict(weights), config, source=str(weights))
