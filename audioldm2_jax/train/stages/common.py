"""Pieces several stages share: caption tokenisation, the frozen conditioning networks (T5, CLAP, AudioMAE LOA),
VAE latents, and feature cropping."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from audioldm2_jax.models.audiomae import AudioMAEEncoder, loa_pooling, pool_loa
from audioldm2_jax.models.vae import AutoencoderKL
from audioldm2_jax.train import components as comp
from audioldm2_jax.train import text as text_lib

# diffusers' pipeline folders name the tokenizers after the encoders they feed.
TOKENIZER_SUBFOLDERS = {"clap": "tokenizer", "t5": "tokenizer_2"}


def find_tokenizer(config, encoder: str) -> str:
    """The tokenizer folder of ``encoder`` ("t5" / "clap"): ``config.text.<encoder>_tokenizer``, else next to the
    encoder's weights (``tokenizer_2/`` or ``tokenizer/`` in the same pipeline folder, export or workdir)."""
    explicit = config.text.get(f"{encoder}_tokenizer", "")
    if explicit:
        return explicit
    source = config.init.get(encoder, "")
    sub = TOKENIZER_SUBFOLDERS[encoder]
    if source:
        path = Path(source)
        for candidate in (path / sub, path / "export" / sub, path.parent / sub, path / "tokenizer"):
            if (candidate / "tokenizer_config.json").is_file():
                return str(candidate)
    raise ValueError(f"no tokenizer for the {encoder} encoder: set text.{encoder}_tokenizer (a folder that "
                     f"transformers' AutoTokenizer loads), or point init.{encoder} at a folder with {sub}/ beside it")


class CaptionTokenizer:
    """Fixed-length tokenisation of a batch of captions, with the unconditional ("") row precomputed."""

    def __init__(self, path: str, max_length: int):
        self.path = path
        self.tokenizer = text_lib.load_tokenizer(path)
        self.max_length = int(max_length)
        ids, mask = text_lib.tokenize(self.tokenizer, [""], self.max_length)
        self.uncond_ids, self.uncond_mask = ids[0], mask[0]

    def __call__(self, captions) -> tuple[np.ndarray, np.ndarray]:
        return text_lib.tokenize(self.tokenizer, [str(c) for c in np.asarray(captions).reshape(-1)], self.max_length)

    def drop(self, ids: jax.Array, mask: jax.Array, dropped: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Rows where ``dropped [B]`` is True become the tokenised empty caption (classifier-free guidance)."""
        ids = jnp.where(dropped[:, None], jnp.asarray(self.uncond_ids)[None], ids)
        mask = jnp.where(dropped[:, None], jnp.asarray(self.uncond_mask)[None], mask)
        return ids, mask


def captions_of(batch: Mapping[str, Any]) -> np.ndarray:
    for key in ("caption", "captions", "text"):
        if key in batch:
            return np.asarray(batch[key])
    raise KeyError(f"the batch has no caption field (keys: {sorted(batch)})")


def fit_frames(features: np.ndarray, frames: int) -> np.ndarray:
    """``[B, T, F]`` cut or zero-padded (at the end) to ``frames`` along T."""
    features = np.asarray(features, np.float32)
    if features.shape[1] >= frames:
        return features[:, :frames]
    pad = np.zeros((features.shape[0], frames - features.shape[1]) + features.shape[2:], np.float32)
    return np.concatenate([features, pad], axis=1)


def audiomae_fbank(batch: Mapping[str, Any], mae_config) -> np.ndarray:
    """AudioMAE's normalised fbank ``[B, input_frames, mel_bins]`` from the batch (cut / padded; the data pipeline
    pads to 1024 frames: a shorter model reads the clip's start)."""
    if "fbank" not in batch:
        raise KeyError("the stage needs AudioMAE's fbank: set data.compute_fbank=True")
    fbank = np.asarray(batch["fbank"], np.float32)
    if fbank.shape[-1] != mae_config.mel_bins:
        raise ValueError(f"batch fbank has {fbank.shape[-1]} bins; model.audiomae.mel_bins={mae_config.mel_bins}")
    return fit_frames(fbank, mae_config.input_frames)


def log_mel(batch: Mapping[str, Any], frames_multiple: int = 1) -> np.ndarray:
    """The batch's log-mel ``[B, T, 64]``, T cut down to a multiple of ``frames_multiple``."""
    if "log_mel" not in batch:
        raise KeyError("the stage needs log-mel spectrograms: set data.compute_log_mel=True")
    mel = np.asarray(batch["log_mel"], np.float32)
    usable = mel.shape[1] - mel.shape[1] % frames_multiple
    return mel[:, :usable]


class LOAExtractor:
    """Ground-truth Language of Audio from a frozen AudioMAE encoder: fbank ``[B, T, F]`` -> ``[B, N, C]``."""

    def __init__(self, mae_config, dtype):
        self.config = mae_config
        self.encoder = AudioMAEEncoder(mae_config, dtype=dtype)

    def check_lambda(self, lam) -> None:
        from audioldm2_jax.train.config import ConfigError

        try:
            loa_pooling(lam, self.config.grid)
        except ValueError as err:
            raise ConfigError(f"config error: LOA pooling for model.audiomae (input_frames="
                              f"{self.config.input_frames}): {err}") from err

    def __call__(self, encoder_params, fbank: jax.Array, lam) -> jax.Array:
        features = self.encoder.apply({"params": encoder_params}, fbank, method=AudioMAEEncoder.features)
        return jax.lax.stop_gradient(pool_loa(features.astype(jnp.float32), lam, self.config.grid))


def vae_latents(vae: AutoencoderKL, vae_params, mel: jax.Array, key: jax.Array | None) -> jax.Array:
    """Unscaled latents ``[B, T/4, F/4, C]`` of log-mel ``[B, T, F]``: a posterior sample (``key``) or its mode."""
    posterior = vae.apply({"params": vae_params}, mel[..., None], method=AutoencoderKL.encode)
    z = posterior.sample(key) if key is not None else posterior.mode()
    return jax.lax.stop_gradient(z)


def frozen_encoder_params(name: str, params: dict) -> dict:
    """AudioMAE is stored as the masked autoencoder (``{"encoder", "decoder"}``); frozen uses keep the encoder."""
    if name == "audiomae" and "encoder" in params:
        return params["encoder"]
    return params


def init_mae_encoder(mae_config):
    from audioldm2_jax.models.audiomae import init_encoder

    return lambda rng: init_encoder(rng, mae_config)


def check_dims(what: str, got: int, expected: int, hint: str) -> None:
    if got != expected:
        from audioldm2_jax.train.config import ConfigError

        raise ConfigError(f"config error: {what}: {got} != {expected} ({hint})")


__all__ = ["CaptionTokenizer", "LOAExtractor", "audiomae_fbank", "captions_of", "check_dims", "comp",
           "find_tokenizer", "fit_frames", "frozen_encoder_params", "init_mae_encoder", "log_mel", "vae_latents"]
