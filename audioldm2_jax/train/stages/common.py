"""Pieces several stages share: caption and transcription tokenisation, the frozen conditioning networks (T5, CLAP,
VITS, AudioMAE LOA), VAE latents, and feature cropping."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from audioldm2_jax import components
from audioldm2_jax.models.audiomae import AudioMAEEncoder, loa_pooling, pool_loa
from audioldm2_jax.models.vae import AutoencoderKL
from audioldm2_jax.models.vits_text import END_OF_PHONEMES_ID, mark_end_of_phonemes
from audioldm2_jax.train import config as config_lib
from audioldm2_jax.train import text as text_lib
from audioldm2_jax.train.config import ConfigError


def text_encoder_2(config) -> str:
    """``"t5"`` or ``"vits"``: the projection's second text stream (``model.text_encoder_2``)."""
    return str(config.model.get("text_encoder_2", "t5"))


def unet_config(config):
    """The UNet's architecture config: read from ``init.unet`` when it names weights (without loading them),
    else ``config.model.unet``. Stages call it before building to know whether the UNet has a T5 stream."""
    source = config.init.get("unet", "")
    return components.get("unet").load_config(source) if source else config_lib.model_config(config, "unet")


def passenger_components(config, base: tuple[str, ...]) -> tuple[str, ...]:
    """A stage's passengers with the second text encoder the model does not use left out (a speech model's export
    carries VITS, never T5, and the reverse)."""
    unused = "t5" if text_encoder_2(config) == "vits" else "vits"
    return tuple(name for name in base + ("vits",) if name != unused and name in components.COMPONENTS)


def find_tokenizer(config, encoder: str) -> str:
    """The tokenizer folder of ``encoder`` ("t5" / "clap" / "vits"): ``config.text.<encoder>_tokenizer``, else next
    to the encoder's weights (``tokenizer_2/`` or ``tokenizer/`` in the same pipeline folder, export or workdir).

    T5 and VITS share ``tokenizer_2/``: only the one ``model.text_encoder_2`` names has a tokenizer here (so that an
    export copies the right one)."""
    if encoder in ("t5", "vits") and encoder != text_encoder_2(config):
        raise ValueError(f"no {encoder} tokenizer: model.text_encoder_2={text_encoder_2(config)!r}")
    explicit = config.text.get(f"{encoder}_tokenizer", "")
    if explicit:
        return explicit
    source = config.init.get(encoder, "")
    sub = components.get(encoder).tokenizer
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


class TranscriptionTokenizer:
    """Phoneme ids of a batch of transcriptions for the VITS encoder, exactly as the inference pipeline makes them:
    padded (and cut) to ``max_length``, the first padded position turned into the end-of-phonemes mark (id 182,
    joining the mask). Rows cut at ``max_length`` get no mark, as in the pipeline."""

    def __init__(self, path: str, max_length: int):
        self.path = path
        self.tokenizer = text_lib.load_tokenizer(path)
        self.max_length = int(max_length)

    def __call__(self, transcriptions) -> tuple[np.ndarray, np.ndarray]:
        texts = [str(t) for t in np.asarray(transcriptions).reshape(-1)]
        out = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="np")
        ids, mask = mark_end_of_phonemes(np.asarray(out["input_ids"]), np.asarray(out["attention_mask"]))
        return ids.astype(np.int32), mask.astype(np.int32)

    def check(self, vocab_size: int) -> None:
        """The tokenizer must pad to ``max_length`` at inference too, and every id must have an embedding."""
        problems = []
        model_max = int(getattr(self.tokenizer, "model_max_length", 0) or 0)
        if model_max != self.max_length:
            problems.append(f"the VITS tokenizer at {self.path} has model_max_length={model_max}, but training pads "
                            f"transcriptions to {self.max_length} phonemes (model.projection.max_seq_length / "
                            "text.vits_max_length); the inference pipeline pads to model_max_length, so the two must "
                            "agree: save the tokenizer with model_max_length set to it")
        if len(self.tokenizer) > vocab_size or END_OF_PHONEMES_ID >= vocab_size:
            problems.append(f"model.vits.vocab_size={vocab_size} has no embedding for every id: the tokenizer has "
                            f"{len(self.tokenizer)} symbols and the end-of-phonemes mark is id {END_OF_PHONEMES_ID}")
        if problems:
            raise ConfigError("config error: " + "; ".join(problems))


def captions_of(batch: Mapping[str, Any], default: str = "") -> np.ndarray:
    """The batch's captions ``[B]``; empty ones become ``default`` (``text.default_caption``) when it is set."""
    for key in ("caption", "captions", "text"):
        if key in batch:
            captions = np.asarray(batch[key]).reshape(-1)
            if default:
                captions = np.asarray([str(c) if str(c).strip() else default for c in captions])
            return captions
    raise KeyError(f"the batch has no caption field (keys: {sorted(batch)})")


def transcriptions_of(batch: Mapping[str, Any], captions: np.ndarray | None = None) -> np.ndarray:
    """The batch's transcriptions ``[B]`` (what a speech model speaks). With ``captions`` (the config's
    ``text.transcription_from_caption``), an empty transcription reads the caption instead.

    Raises a ConfigError when the batch has no transcription field, or when every transcription is empty and no
    caption stands in: a speech model trained on empty phoneme streams learns to ignore them."""
    if "transcription" not in batch:
        raise ConfigError(f"config error: model.text_encoder_2='vits' reads each clip's transcription, but the batch "
                          f"has no 'transcription' field (keys: {sorted(batch)}); use a dataset with transcriptions "
                          "(LJSpeech, a manifest with a transcription column) or set text.transcription_from_caption")
    texts = [str(t).strip() for t in np.asarray(batch["transcription"]).reshape(-1)]
    if captions is not None:
        texts = [t or str(c) for t, c in zip(texts, np.asarray(captions).reshape(-1))]
    if not any(texts):
        raise ConfigError("config error: model.text_encoder_2='vits' reads each clip's transcription, but every "
                          "transcription in the batch is empty (the procedural dataset has none): use a dataset "
                          "with transcriptions (LJSpeech, GigaSpeech manifests) or set "
                          "text.transcription_from_caption=True for a smoke run")
    return np.asarray(texts)


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


def with_latent_scale(exported: dict, extras: Mapping[str, Any]) -> dict:
    """A stage's export with the latent scale its UNet was trained with carried by the VAE, as diffusers'
    ``scaling_factor`` (and ``latent_scale`` in its training record)."""
    if "vae" in exported:
        cfg, vae_params, training = exported["vae"]
        scale = float(jax.device_get(extras["latent_scale"]))
        exported = {**exported, "vae": (dataclasses.replace(cfg, scaling_factor=scale), vae_params,
                                        {**training, "latent_scale": scale})}
    return exported


def check_dims(what: str, got: int, expected: int, hint: str) -> None:
    if got != expected:
        raise ConfigError(f"config error: {what}: {got} != {expected} ({hint})")


__all__ = ["CaptionTokenizer", "LOAExtractor", "TranscriptionTokenizer", "audiomae_fbank", "captions_of", "check_dims",
           "find_tokenizer", "fit_frames", "log_mel",
           "passenger_components", "text_encoder_2", "transcriptions_of", "unet_config", "vae_latents",
           "with_latent_scale"]
