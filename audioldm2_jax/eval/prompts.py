"""Prompt following on the procedural grammar, with the baselines that make a score mean something.

Each check reads one attribute back from a clip (:mod:`audioldm2_jax.eval.procedural`) and compares it with the one
its prompt stated: the pitch class from the audio, the pitch class from the log-mel spectrogram the diffusion model
generated (before the vocoder), the instrument family, and the tempo class (onset count). Every accuracy comes with
two baselines computed from the same clips in the same run (:func:`summarise`):

* ``shuffled``: the same estimates scored against the other prompts' attributes (every clip against every other
  prompt: the mean over all shuffles). A generator that ignores its prompt scores this, whatever it plays.
* ``best_constant``: the score of the best single answer for every prompt (the most frequent attribute value).

:func:`score_samples` scores generated clips; :func:`reference_scores` the prompts' true clips (the checks' own
ceiling, and, scored against mismatched prompts, their floor) and those clips through a trained vocoder and VAE,
which bound what the chain can reach.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from audioldm2_jax.audio.io import read_audio
from audioldm2_jax.audio.mel import log_mel_spectrogram
from audioldm2_jax.data import procedural as dataset
from audioldm2_jax.eval import procedural as estimators

# the checks of each clip: attribute read back from the audio (or, for spectrogram_pitch_class, from the log-mel)
CHECKS = ("pitch_class", "spectrogram_pitch_class", "instrument_family", "tempo")
CHECK_TITLES = {"pitch_class": "pitch class (audio)", "spectrogram_pitch_class": "pitch class (spectrogram)",
                "instrument_family": "instrument family", "tempo": "tempo class (onset count)"}
MISMATCHED = "ground_truth, prompts shifted by one"


def expected_labels(attributes: dataset.ClipAttributes) -> dict:
    """What each check should read from a clip of ``attributes`` (``None``: the check does not apply)."""
    root = attributes.pitch_classes[0] if attributes.pitch_classes else None
    return {"pitch_class": root, "spectrogram_pitch_class": root, "instrument_family": attributes.family,
            "tempo": int(attributes.tempo_bpm)}


def estimate_labels(wave: np.ndarray, log_mel: np.ndarray | None, grammar: Mapping,
                    sample_rate: int = dataset.SAMPLE_RATE) -> dict:
    """What each check reads from one clip: waveform ``[N]`` and, if given, its log-mel ``[T, 64]``. ``grammar``:
    ``instruments`` (the pitched ones are the spectrogram pitch estimator's templates) and ``tempos`` (the tempo
    classes; they must differ in onset count at this clip length)."""
    wave = np.asarray(wave, np.float32)
    found = estimators.estimate_pitch_classes(wave, sample_rate, max_notes=1)
    labels = {"pitch_class": found[0] if found else None,
              "instrument_family": estimators.estimate_instrument_family(wave, sample_rate),
              "tempo": estimators.estimate_tempo(wave, grammar["tempos"], sample_rate)}
    pitched = tuple(i for i in grammar["instruments"] if i in dataset.PITCHED_INSTRUMENTS)
    if log_mel is not None and pitched:
        labels["spectrogram_pitch_class"] = estimators.estimate_pitch_class_from_log_mel(log_mel, pitched)
    return labels


def summarise(estimated: Sequence[Mapping], expected: Sequence[Mapping]) -> dict:
    """Per check: ``accuracy`` (estimate == expected), ``correct``, ``count``, and the baselines of the same run:
    ``shuffled`` (each clip's estimate against every other clip's expected value, averaged), ``best_constant`` (the
    share of the most frequent expected value) with that value as ``constant_label``, and ``margin`` (accuracy minus
    shuffled). Clips whose expected value is ``None``, or that lack the estimate, do not count."""
    summary = {}
    for check in CHECKS:
        pairs = [(e[check], x[check]) for e, x in zip(estimated, expected) if x.get(check) is not None and check in e]
        if not pairs:
            continue
        n = len(pairs)
        truth = Counter(x for _, x in pairs)
        correct = sum(e == x for e, x in pairs)
        if n > 1:  # count of other prompts that expect what the clip shows, over the n - 1 other prompts
            shuffled = float(np.mean([(truth.get(e, 0) - (e == x)) / (n - 1) for e, x in pairs]))
        else:
            shuffled = float("nan")
        label, top = truth.most_common(1)[0]
        accuracy = correct / n
        summary[check] = {"accuracy": accuracy, "correct": int(correct), "count": n, "shuffled": shuffled,
                          "best_constant": top / n, "constant_label": label, "margin": accuracy - shuffled}
    return summary


def score_clips(waves: Sequence[np.ndarray], log_mels: Sequence[np.ndarray | None], prompts: Sequence[dict],
                grammar: Mapping, sample_rate: int = dataset.SAMPLE_RATE) -> dict:
    """Every check on clip ``i`` against prompt ``i``: ``{"clips": [per clip: name, caption, expected_*,
    estimated_* and the check's bool], "summary": summarise(...)}``."""
    if not (len(waves) == len(log_mels) == len(prompts)):
        raise ValueError(f"score_clips needs one waveform and log-mel per prompt: {len(waves)} waveforms, "
                         f"{len(log_mels)} log-mels, {len(prompts)} prompts")
    estimated = [estimate_labels(w, m, grammar, sample_rate) for w, m in zip(waves, log_mels)]
    expected = [expected_labels(p["attributes"]) for p in prompts]
    clips = []
    for p, e, x in zip(prompts, estimated, expected):
        row = {"name": p["name"], "caption": p["caption"]}
        for check in CHECKS:
            if check in e and x[check] is not None:
                row.update({f"expected_{check}": x[check], f"estimated_{check}": e[check], check: e[check] == x[check]})
        clips.append(row)
    return {"clips": clips, "summary": summarise(estimated, expected), "estimated": estimated, "expected": expected}


def score_samples(samples_dir: str | os.PathLike, prompts: Sequence[dict], grammar: Mapping) -> dict:
    """:func:`score_clips` on each prompt's ``<name>.wav`` and generated log-mel ``<name>.mel.npy`` (when written)
    in ``samples_dir``; the spectrogram check tells the diffusion model's prompt following apart from the
    vocoder's rendering."""
    waves, mels, rate = [], [], dataset.SAMPLE_RATE
    for p in prompts:
        wave, rate = read_audio(Path(samples_dir) / f"{p['name']}.wav")
        waves.append(np.asarray(wave, np.float32))
        mel_path = Path(samples_dir) / f"{p['name']}.mel.npy"
        mels.append(np.load(mel_path) if mel_path.exists() else None)
    scores = score_clips(waves, mels, prompts, grammar, rate)
    return {"clips": scores["clips"], "summary": scores["summary"]}


def true_clips(prompts: Sequence[dict], frames: int | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """The prompts' true clips rendered from their attributes (clip ``i`` with seed ``i``) and their log-mels
    ``[B, frames, 64]`` (cut, or padded with the quietest value, to ``frames``)."""
    waves = [dataset.render(p["attributes"], np.random.default_rng(i)) for i, p in enumerate(prompts)]
    mels = np.stack([log_mel_spectrogram(w) for w in waves])
    frames = mels.shape[1] if frames is None else int(frames)
    mels = mels[:, :frames]
    if mels.shape[1] < frames:
        mels = np.pad(mels, ((0, 0), (0, frames - mels.shape[1]), (0, 0)), constant_values=float(mels.min()))
    return waves, mels


def reference_scores(pipe, prompts: Sequence[dict], grammar: Mapping) -> dict:
    """Summaries (:func:`summarise`) of: the prompts' true clips (``ground_truth``: each check's ceiling, ~100 %);
    the same clips against mismatched prompts (:data:`MISMATCHED`: clip ``i + 1`` scored
    against prompt ``i``, which must land near the shuffled baseline, or the check measures something other than
    the prompt); the trained vocoder's rendering of their log-mels (the vocoder's ceiling); and the vocoder's
    rendering of the VAE's reconstruction of them (the ceiling of everything after the diffusion model). Also
    ``vae_reconstruction_l1`` (mean absolute log-mel error)."""
    waves, mels = true_clips(prompts, pipe.frames_for(prompts[0]["attributes"].duration))  # [B, T, 64]
    vae, vocoder = pipe.vae, pipe.vocoder

    @jax.jit
    def render(params, mel):
        recon, _ = vae.apply(params["vae"], mel[..., None])
        return (vocoder.apply(params["vocoder"], mel), vocoder.apply(params["vocoder"], recon[..., 0]),
                recon[..., 0])

    vocoded, round_trip, recon = jax.device_get(render(pipe.params, jnp.asarray(mels, jnp.float32)))
    length = len(waves[0])
    truth = score_clips(waves, list(mels), prompts, grammar)
    mismatched = truth["estimated"][1:] + truth["estimated"][:1]  # clip i + 1 against prompt i
    out = {"ground_truth": truth["summary"],
           MISMATCHED: summarise(mismatched, truth["expected"])}
    out["vocoder(true mel)"] = score_clips([w[:length] for w in vocoded], [None] * len(prompts), prompts,
                                           grammar)["summary"]
    out["vocoder(vae(true mel))"] = score_clips([w[:length] for w in round_trip], list(recon), prompts,
                                                grammar)["summary"]
    out["vae_reconstruction_l1"] = float(np.mean(np.abs(recon - mels)))
    return out
