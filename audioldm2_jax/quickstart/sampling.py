"""Step 3 of the quickstart: prompts drawn from the quickstart grammar (fixed seed), sampled from the joint stage's
export with :class:`audioldm2_jax.pipeline.AudioLDM2Pipeline` into ``root/samples`` (one WAV, spectrogram PNG, log-mel
and JSON per clip, as ``sample.py`` writes them); and once more from the LOA of the prompts' true clips instead of
the language model's (``root/samples_true_loa``), which tells the diffusion model's prompt following apart from
GPT-2's."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from audioldm2_jax import components
from audioldm2_jax.audio import fbank as fbank_lib
from audioldm2_jax.audio.io import save_spectrogram_png, write_wav
from audioldm2_jax.configs import quickstart as qs
from audioldm2_jax.data.procedural import caption_for, sample_attributes
from audioldm2_jax.pipeline import AudioLDM2Pipeline
from audioldm2_jax.train.stages.common import LOAExtractor, audiomae_fbank


def draw_prompts(count: int, seed: int, duration: float) -> list[dict]:
    """``count`` prompts of the quickstart grammar: ``{"name", "caption", "attributes"}`` (attributes as the
    procedural dataset states them)."""
    rng = np.random.default_rng(seed)
    prompts = []
    for i in range(count):
        attributes = sample_attributes(rng, duration, **qs.GRAMMAR)
        prompts.append({"name": f"clip{i:03d}", "caption": caption_for(attributes, rng), "attributes": attributes})
    return prompts


def true_clip_loa(true_waves: Sequence[np.ndarray], audiomae_dir: str | os.PathLike, lam: int) -> np.ndarray:
    """The Language of Audio of real clips, as the LDM stage computes it for training (its
    :class:`~audioldm2_jax.train.stages.common.LOAExtractor`): the AudioMAE encoder of ``audiomae_dir`` (an export's
    ``audiomae`` folder) on each clip's normalised fbank, pooled at rate ``lam``: float32 ``[B, tokens, width]``."""
    config, params, _ = components.load("audiomae", audiomae_dir)
    fbank = audiomae_fbank({"fbank": np.stack([fbank_lib.audiomae_input(np.asarray(w, np.float32))
                                               for w in true_waves])}, config)
    extract = LOAExtractor(config, jnp.float32)
    return np.asarray(jax.jit(extract, static_argnums=2)(params["encoder"], fbank, lam), np.float32)


def sample_prompts(export, prompts: Sequence[dict], out_dir: str | os.PathLike, settings: dict,
                   progress: bool = True, loa: np.ndarray | None = None) -> dict:
    """Samples every prompt from a training export (its folder, or the pipeline loaded from it) into ``out_dir``:
    ``<name>.wav``, ``<name>.png`` and ``<name>.json`` per clip, as ``sample.py`` writes them. Clip ``i`` uses seed
    ``settings["seed"] + i``.

    Prompts are batched in order of their T5 token count: the pipeline pads a batch's prompts to the longest one,
    which shifts the language model's positions for the shorter ones by the padding (training showed every
    caption unpadded), so prompts of similar lengths go together. The last batch is padded to
    ``settings["batch_size"]`` (one compiled sampling loop for all). ``loa`` (one row per prompt): the LOA to
    condition on instead of the language model's (:meth:`AudioLDM2Pipeline.generate`). Returns the totals:
    ``clips``, ``audio_s``, ``wall_s`` (without compilation) and ``compile_s``."""
    pipe = export if isinstance(export, AudioLDM2Pipeline) else AudioLDM2Pipeline.from_pretrained(export)
    batch_size = int(settings["batch_size"])
    call = {k: settings[k] for k in ("audio_length_in_s", "num_inference_steps", "guidance_scale", "scheduler")}
    lengths = [len(pipe.tokenizer_2(p["caption"])["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (lengths[i], i))
    chunks = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    totals = dict(clips=0, audio_s=0.0, wall_s=0.0, compile_s=0.0)
    bar = tqdm(total=len(prompts), unit="clip", desc="sample", disable=not progress)
    for chunk in chunks:
        out = _sample_chunk(pipe, [prompts[i] for i in chunk], [int(settings["seed"]) + i for i in chunk], out_dir,
                            batch_size, call, None if loa is None else np.asarray(loa)[chunk])
        for key, value in out.items():
            totals[key] += value
        bar.update(len(chunk))
    bar.close()
    return totals


def _sample_chunk(pipe, prompts: Sequence[dict], seeds: Sequence[int], out_dir, batch_size: int, call: dict,
                  loa: np.ndarray | None = None) -> dict:
    """One pipeline call for up to ``batch_size`` prompts (padded to that size with the last one)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    real = len(prompts)
    captions = [p["caption"] for p in prompts] + [prompts[-1]["caption"]] * (batch_size - real)
    seeds = list(seeds) + [seeds[-1]] * (batch_size - real)
    if loa is not None:
        loa = np.concatenate([loa, np.repeat(loa[-1:], batch_size - real, axis=0)])
    result = pipe.generate(captions, seed=seeds, loa=loa, **call)
    waveforms, log_mels = result.waveforms, result.log_mel
    for prompt, seed, wave, log_mel in zip(prompts, seeds, waveforms[:real], log_mels):
        name = prompt["name"]
        write_wav(out / f"{name}.wav", wave, pipe.sampling_rate)
        np.save(out / f"{name}.mel.npy", log_mel)
        save_spectrogram_png(out / f"{name}.png", wave, prompt["caption"])
        settings = dict(prompt=prompt["caption"], seed=seed, num_waveforms_per_prompt=1,
                        sampling_rate=pipe.sampling_rate, num_samples=int(wave.shape[0]),
                        duration_s=wave.shape[0] / pipe.sampling_rate,
                        loa="given" if loa is not None else "generated", **call)
        (out / f"{name}.json").write_text(json.dumps(settings, indent=2, default=str) + "\n")
    t = result.timings
    return dict(clips=real, audio_s=real * waveforms.shape[1] / pipe.sampling_rate, wall_s=t.run,
                compile_s=t.compile)
