"""Prompt following on the procedural grammar: the checks of :mod:`audioldm2_jax.eval.procedural` run on generated
clips against the attributes their prompts stated (:func:`score_samples`), and on the prompts' true clips through a
trained vocoder and VAE, which bound what the chain can reach (:func:`reference_scores`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from audioldm2_jax.audio.io import read_audio
from audioldm2_jax.audio.mel import log_mel_spectrogram
from audioldm2_jax.data import procedural as dataset
from audioldm2_jax.eval import procedural as estimators

# the report's checks of each clip (audio, except the pitch class read from the generated spectrogram)
CHECKS = ("pitch_class", "spectrogram_pitch_class", "instrument_family", "onset_rate")


def score_samples(samples_dir: str | os.PathLike, prompts: Sequence[dict]) -> dict:
    """Runs the procedural checks on each prompt's WAV file: ``{"clips": [...], "summary": {...}}``.

    Per clip: pitch class (the note the caption names, for pitched prompts), instrument family, onset rate (as
    :func:`audioldm2_jax.eval.procedural.score_clip` checks them), and ``spectrogram_pitch_class``: the pitch
    class read from the log-mel the diffusion model generated (``<name>.mel.npy``, the vocoder's input), which
    tells the diffusion model's prompt following apart from the vocoder's rendering. Summary: accuracy per check
    with its count and chance level (pitch class: 1/12; family: 1/5, the procedural families)."""
    clips = []
    for p in prompts:
        wave, rate = read_audio(Path(samples_dir) / f"{p['name']}.wav")
        attributes = p["attributes"]
        scores = estimators.score_clip(np.asarray(wave, np.float32), attributes, rate)
        found = estimators.estimate_pitch_classes(np.asarray(wave, np.float32), rate, max_notes=1)
        mel_path = Path(samples_dir) / f"{p['name']}.mel.npy"
        if attributes.pitch_classes and mel_path.exists():
            from_mel = estimators.estimate_pitch_class_from_log_mel(np.load(mel_path))
            scores["spectrogram_pitch_class"] = from_mel == attributes.pitch_classes[0]
        clips.append({"name": p["name"], "caption": p["caption"], "pitch_classes": list(attributes.pitch_classes),
                      "estimated_pitch_class": found[0] if found else None,
                      "family": attributes.family,
                      "estimated_family": estimators.estimate_instrument_family(np.asarray(wave, np.float32), rate),
                      "onset_rate": attributes.onset_rate,
                      "estimated_onset_rate": estimators.estimate_onset_rate(np.asarray(wave, np.float32), rate),
                      **{k: bool(v) for k, v in scores.items()}})
    chance = {"pitch_class": 1 / 12, "spectrogram_pitch_class": 1 / 12,
              "instrument_family": 1 / len(dataset.FAMILIES), "onset_rate": None}
    summary = {}
    for check in CHECKS:
        values = [c[check] for c in clips if check in c]
        if values:
            summary[check] = {"accuracy": float(np.mean(values)), "correct": int(np.sum(values)),
                              "count": len(values), "chance": chance[check]}
    roots = [c["pitch_classes"][0] for c in clips if c["pitch_classes"]]
    for check in ("pitch_class", "spectrogram_pitch_class"):
        if check in summary:  # what output that ignores its prompt reaches by always sounding the most frequent note
            summary[check]["best_constant"] = max(roots.count(r) for r in set(roots)) / len(roots)
    return {"clips": clips, "summary": summary}


def reference_scores(pipe, prompts: Sequence[dict]) -> dict:
    """Where the chain loses the prompt: the procedural checks on the prompts' ground-truth clips (rendered from
    their attributes: the checks' own ceiling), on the trained vocoder's rendering of their log-mel spectrograms
    (the vocoder's ceiling), and on the vocoder's rendering of the VAE's reconstruction of them (the ceiling of
    everything after the diffusion model). Same summary layout as :func:`score_samples`."""
    waves = [dataset.render(p["attributes"], np.random.default_rng(i)) for i, p in enumerate(prompts)]
    frames = pipe.frames_for(prompts[0]["attributes"].duration)
    mels = np.stack([log_mel_spectrogram(w)[:frames] for w in waves])  # [B, T, 64]
    if mels.shape[1] < frames:  # the VAE needs a multiple of its scale factor: pad with silence
        mels = np.pad(mels, ((0, 0), (0, frames - mels.shape[1]), (0, 0)), constant_values=float(mels.min()))
    vae, vocoder = pipe.vae, pipe.vocoder

    @jax.jit
    def render(params, mel):
        recon, _ = vae.apply(params["vae"], mel[..., None])
        return (vocoder.apply(params["vocoder"], mel), vocoder.apply(params["vocoder"], recon[..., 0]),
                recon[..., 0])

    vocoded, round_trip, recon = jax.device_get(render(pipe.params, jnp.asarray(mels, jnp.float32)))
    out = {}
    for name, batch, spectrograms in (("ground_truth", waves, mels), ("vocoder(true mel)", vocoded, None),
                                      ("vocoder(vae(true mel))", round_trip, recon)):
        hits = [estimators.score_clip(np.asarray(w[:len(waves[0])], np.float32), p["attributes"])
                for w, p in zip(batch, prompts)]
        if spectrograms is not None:
            for hit, log_mel, p in zip(hits, spectrograms, prompts):
                if p["attributes"].pitch_classes:
                    hit["spectrogram_pitch_class"] = (estimators.estimate_pitch_class_from_log_mel(log_mel)
                                                      == p["attributes"].pitch_classes[0])
        out[name] = {check: float(np.mean([h[check] for h in hits if check in h]))
                     for check in CHECKS if any(check in h for h in hits)}
    out["vae_reconstruction_l1"] = float(np.mean(np.abs(recon - mels)))
    return out
