"""CLAP score of clips against their prompts with the project's CLAP (any transformers-layout ``ClapModel``, e.g.
the one inside an AudioLDM 2 checkpoint): prompts -> text embeddings, waveforms -> resampled to CLAP's rate -> the
feature extractor's mel views -> audio embeddings, then :func:`audioldm2_jax.eval.metrics.clap_score`. Both towers
run jitted with each batch split over a :class:`~audioldm2_jax.eval.placement.BatchMesh` (every local device by
default), the weights replicated."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from audioldm2_jax.audio.clap_features import ClapFeatureConfig, clap_audio_inputs, resample_for_clap
from audioldm2_jax.eval.metrics import ClapScore, clap_score
from audioldm2_jax.eval.placement import BatchMesh, pad_rows
from audioldm2_jax.models.clap import ClapConfig, ClapModel


class ClapEmbedder:
    """Jitted text and audio embeddings of one CLAP: ``config`` (:class:`ClapConfig`), ``variables`` (what
    ``ClapModel.apply`` takes, ``{"params": ...}``, as the pipeline holds it), ``tokenizer`` (the checkpoint's
    RoBERTa tokenizer), ``features`` (the checkpoint's feature extractor settings; default AudioLDM 2's),
    ``devices`` (what batches are split over: None for every local device, a count, a list of devices or a
    :class:`BatchMesh`; the variables are replicated on them)."""

    def __init__(self, config: ClapConfig, variables: Mapping[str, Any], tokenizer, features: ClapFeatureConfig | None
                 = None, devices: int | Sequence[jax.Device] | BatchMesh | None = None):
        if "audio_model" not in variables.get("params", {}):
            raise ValueError("a CLAP score needs CLAP's audio branch; these parameters have the text tower only "
                             "(a trained export): use the CLAP of a published checkpoint")
        self.mesh = devices if isinstance(devices, BatchMesh) else BatchMesh(devices)
        self.config, self.tokenizer = config, tokenizer
        self.variables = self.mesh.replicate(variables)
        self.features = features or ClapFeatureConfig()
        model = ClapModel(config)
        # compiled by BatchMesh.call, once per batch shape
        self._text = lambda v, ids, mask: model.apply(v, ids, mask, method=ClapModel.get_text_features)
        self._audio = lambda v, feats, longer: model.apply(v, feats, longer, method=ClapModel.get_audio_features)

    def _run(self, fn: Callable, inputs: Sequence[np.ndarray | None], count: int, rows: int) -> np.ndarray:
        """``fn(variables, *inputs)`` with every input padded to ``max(rows, count)`` rounded up to a multiple of the
        device count (copies of the last row) and split over the devices; the first ``count`` rows of the result."""
        total = self.mesh.rows(max(rows, count))
        args = [None if x is None else self.mesh.split(pad_rows(x, total)) for x in inputs]
        return np.asarray(self.mesh.call(fn, self.variables, *args))[:count]

    def text_embeddings(self, prompts: Sequence[str], rows: int = 0) -> np.ndarray:
        """``[B]`` prompts -> L2-normalised ``[B, P]`` float32. Tokenised as the pipeline does (truncated at the
        tokenizer's ``model_max_length``, padded to the longest; padding has no effect on the pooled token). The
        batch runs as ``max(rows, B)`` rows rounded up to a multiple of the device count (one compile for batches
        of up to ``rows`` prompts of a given token length)."""
        if isinstance(prompts, str) or not len(prompts):
            raise ValueError("text_embeddings: expected a non-empty list of prompts")
        tok = self.tokenizer(list(prompts), padding="longest", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="np")
        ids = np.asarray(tok["input_ids"], np.int32)
        mask = np.asarray(tok["attention_mask"], np.int32)
        return self._run(self._text, (ids, mask), len(ids), rows)

    def audio_embeddings(self, waveforms: np.ndarray | Sequence[np.ndarray], sampling_rate: int, seed: int = 0,
                         rows: int = 0) -> np.ndarray:
        """Waveforms at ``sampling_rate`` (``[B, N]`` or a list of ``[N_i]``) -> L2-normalised ``[B, P]`` float32:
        resampled to the extractor's rate (soxr, as AudioLDM 2 before ranking), the extractor's mel views (its
        random crops of clips longer than its window drawn from ``np.random.RandomState(seed)``, as the pipeline),
        ``is_longer`` passed to fused models only. ``rows``: as :meth:`text_embeddings`."""
        if isinstance(waveforms, np.ndarray) and waveforms.ndim == 1:
            waveforms = [waveforms]
        if not len(waveforms):
            raise ValueError("audio_embeddings: no waveforms")
        rate = self.features.sampling_rate
        audio = [np.asarray(w, np.float32) if sampling_rate == rate else
                 resample_for_clap(np.asarray(w, np.float32), sampling_rate, rate) for w in waveforms]
        features, is_longer = clap_audio_inputs(audio, self.features, rng=np.random.RandomState(seed))
        longer = is_longer if self.config.audio.enable_fusion else None
        return self._run(self._audio, (features, longer), len(features), rows)


def clap_scores(embedder: ClapEmbedder, prompts: Sequence[str], waveforms: np.ndarray | Sequence[np.ndarray],
                sampling_rate: int, batch_size: int = 16, seed: int = 0) -> ClapScore:
    """CLAP score of clip ``i`` (``waveforms[i]`` at ``sampling_rate``) against ``prompts[i]``: per-clip cosines,
    their mean and std (:func:`audioldm2_jax.eval.metrics.clap_score`). Batches of ``batch_size`` clips (the last one
    padded: one compile per tower and token length); the crops of batch ``k`` are drawn from seed ``seed + k``."""
    if len(prompts) != len(waveforms):
        raise ValueError(f"clap_scores: {len(prompts)} prompts for {len(waveforms)} clips (one prompt per clip)")
    if batch_size < 1:
        raise ValueError(f"clap_scores: batch_size={batch_size}")
    text, audio = [], []
    for k, start in enumerate(range(0, len(prompts), batch_size)):
        text.append(embedder.text_embeddings(prompts[start:start + batch_size], rows=batch_size))
        audio.append(embedder.audio_embeddings(list(waveforms[start:start + batch_size]), sampling_rate, seed + k,
                                               rows=batch_size))
    if not text:
        raise ValueError("clap_scores: no clips")
    return clap_score(np.concatenate(text), np.concatenate(audio))
