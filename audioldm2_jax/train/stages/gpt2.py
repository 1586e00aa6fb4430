"""The GPT-2 stage: text -> Language of Audio. The projection model and GPT-2 learn to continue the encoded caption
(frozen CLAP + frozen T5, projected and framed by learned SOS / EOS embeddings; the speech models read frozen CLAP
of the caption + the frozen VITS phoneme encoder of the transcription) with the ground-truth LOA of the clip
(frozen AudioMAE features pooled at ``gpt2.loa_lambda``), by teacher forcing: the input is the prompt followed by
LOA tokens ``0 .. N-2``, and the hidden state at the prompt's last token and at each LOA token is regressed onto
the next LOA token (``gpt2.loss``: L1 or MSE), exactly the states greedy generation feeds back.

Positions. At inference a single prompt has no padding, and its first generated token sits right after its last
real token. Training batches pad captions to a fixed length, so each sequence is *packed* before GPT-2 runs:
real prompt tokens first, then the LOA inputs, then the padding (masked). Every example then sees the positions
it will see when generated on its own. The speech models' phoneme stream is the exception: the pipeline pads it to
its fixed length at inference too (masked slots inside the prompt, the LOA starting after the whole prompt), so it
is trained in that same layout, unpacked.

Condition dropout (``gpt2.cond_dropout``): a dropped example gets the empty caption (speech: and an all-zero, fully
masked phoneme stream, the pipeline's negative one) and a zero LOA target, so that GPT-2 maps the empty prompt to
the zero LOA that the LDM stage uses as its unconditional input (classifier-free guidance then gets a consistent
"unconditional" through the whole text -> LOA -> UNet chain).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from audioldm2_jax.models.audiomae import loa_token_count
from audioldm2_jax.models.clap import ClapTextTower
from audioldm2_jax.models.gpt2 import GPT2Model
from audioldm2_jax.models.projection import AudioLDM2ProjectionModel
from audioldm2_jax.models.t5 import T5EncoderModel
from audioldm2_jax.models.vits_text import VitsTextEncoder
from audioldm2_jax.train import held_out
from audioldm2_jax.train.config import ConfigError
from audioldm2_jax.train.stages import Stage, common


def pack_sequences(values: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Moves each row's unmasked entries to the front, keeping their order: ``values [B, L, D]``, ``mask [B, L]`` ->
    ``(packed values, packed mask)``."""
    order = jnp.argsort(-(mask > 0).astype(jnp.int32), axis=1, stable=True)
    return jnp.take_along_axis(values, order[..., None], axis=1), jnp.take_along_axis(mask, order, axis=1)


def loa_regression_loss(pred: jax.Array, target: jax.Array, kind: str) -> jax.Array:
    error = pred.astype(jnp.float32) - target.astype(jnp.float32)
    return jnp.mean(jnp.abs(error)) if kind == "l1" else jnp.mean(error * error)


class TextToLOA:
    """Frozen CLAP and second text encoder, the trainable projection and GPT-2: shared by the GPT-2 and joint stages.

    The second stream follows ``model.text_encoder_2``: ``"t5"``, the caption through FLAN-T5 (padded to
    ``text.t5_max_length``); ``"vits"`` (the speech models), the clip's transcription through the VITS phoneme
    encoder, tokenised as the inference pipeline does (padded to the projection's ``max_seq_length``, end-of-phonemes
    mark) and given the projection's learned position table. A dropped example's phoneme stream is all zeros and
    fully masked: the pipeline's unconditional (negative) phoneme stream.
    """

    def __init__(self, stage: Stage, config, dtype):
        cfgs = stage.model_configs
        self.speech = common.text_encoder_2(config) == "vits"
        self.clap = ClapTextTower(cfgs["clap"], dtype=dtype)
        self.projection = AudioLDM2ProjectionModel(cfgs["projection"], dtype=dtype)
        self.gpt2 = GPT2Model(cfgs["gpt2"], dtype=dtype)
        self.loa = common.LOAExtractor(cfgs["audiomae"], dtype)
        self.clap_tokens = common.CaptionTokenizer(common.find_tokenizer(config, "clap"), config.text.clap_max_length)
        self.default_caption = str(config.text.get("default_caption", ""))
        p = cfgs["projection"]
        if self.speech:
            self.vits = VitsTextEncoder(cfgs["vits"], dtype=dtype)
            self.phonemes = common.TranscriptionTokenizer(common.find_tokenizer(config, "vits"),
                                                          _phoneme_length(config, p))
            self.phonemes.check(cfgs["vits"].vocab_size)
            self.transcription_from_caption = bool(config.text.get("transcription_from_caption", False))
            width_2, what_2 = cfgs["vits"].hidden_size, "model.vits.hidden_size"
        else:
            self.t5 = T5EncoderModel(cfgs["t5"], dtype=dtype)
            self.t5_tokens = common.CaptionTokenizer(common.find_tokenizer(config, "t5"), config.text.t5_max_length)
            width_2, what_2 = cfgs["t5"].d_model, "model.t5.d_model"
        self.lam = int(config.gpt2.loa_lambda)
        self.loa.check_lambda(self.lam)
        self.num_tokens = _token_count(cfgs["audiomae"], self.lam)
        self.loss_kind = str(config.gpt2.loss)
        common.check_dims("model.projection.text_encoder_dim vs the CLAP embedding width", p.text_encoder_dim,
                          cfgs["clap"].text.projection_dim, "the projection reads CLAP text embeddings")
        common.check_dims(f"model.projection.text_encoder_1_dim vs {what_2}", p.text_encoder_1_dim, width_2,
                          f"the projection reads {'VITS' if self.speech else 'T5'} hidden states")
        common.check_dims("model.projection.language_model_dim vs model.gpt2.n_embd", p.language_model_dim,
                          cfgs["gpt2"].n_embd, "GPT-2 reads the projected prompt")
        common.check_dims("model.gpt2.n_embd vs model.audiomae.embed_dim", cfgs["gpt2"].n_embd,
                          cfgs["audiomae"].embed_dim, "GPT-2 predicts AudioMAE LOA tokens")
        if cfgs["gpt2"].max_new_tokens != self.num_tokens:
            raise ConfigError(f"config error: model.gpt2.max_new_tokens={cfgs['gpt2'].max_new_tokens} but LOA pooling "
                              f"gpt2.loa_lambda={self.lam} gives {self.num_tokens} tokens: inference generates "
                              "max_new_tokens LOA tokens, so the two must agree")
        total = self._prompt_length() + self.num_tokens - 1
        if total > cfgs["gpt2"].n_positions:
            raise ConfigError(f"config error: prompt ({self._prompt_length()}) + LOA ({self.num_tokens}) tokens exceed "
                              f"model.gpt2.n_positions={cfgs['gpt2'].n_positions}")

    def _prompt_length(self) -> int:
        length_2 = self.phonemes.max_length if self.speech else self.t5_tokens.max_length
        return 1 + 2 + length_2 + 2

    def host_batch(self, batch, mae_config) -> dict:
        captions = common.captions_of(batch, self.default_caption)
        clap_ids, clap_mask = self.clap_tokens(captions)
        out = {"clap_ids": clap_ids, "clap_mask": clap_mask, "fbank": common.audiomae_fbank(batch, mae_config)}
        if self.speech:
            texts = common.transcriptions_of(batch, captions if self.transcription_from_caption else None)
            out["phoneme_ids"], out["phoneme_mask"] = self.phonemes(texts)
        else:
            out["t5_ids"], out["t5_mask"] = self.t5_tokens(captions)
        return out

    def text_streams(self, frozen, batch, dropped):
        """Frozen encodings of the (possibly dropped) text: CLAP ``[B, 1, P]`` and the second stream ``[B, L, D1]``
        with its mask ``[B, L]`` (T5 of the caption, or VITS of the transcription)."""
        clap_ids, clap_mask = self.clap_tokens.drop(batch["clap_ids"], batch["clap_mask"], dropped)
        clap = self.clap.apply({"params": frozen["clap"]}, clap_ids, clap_mask)[:, None, :]
        if self.speech:
            mask = batch["phoneme_mask"]
            hidden = self.vits.apply({"params": frozen["vits"]}, batch["phoneme_ids"], mask).last_hidden_state
            hidden = jnp.where(dropped[:, None, None], 0.0, hidden)
            mask = jnp.where(dropped[:, None], 0, mask)
        else:
            ids, mask = self.t5_tokens.drop(batch["t5_ids"], batch["t5_mask"], dropped)
            hidden = self.t5.apply({"params": frozen["t5"]}, ids, mask)
        return jax.lax.stop_gradient(clap), jax.lax.stop_gradient(hidden), mask

    def prompt(self, projection_params, clap, hidden_2, mask_2):
        """GPT-2's prompt ``[B, P, D]`` and mask ``[B, P]`` (the CLAP stream counts as unpadded, as in diffusers)."""
        ones = jnp.ones(clap.shape[:2], mask_2.dtype)
        return self.projection.apply({"params": projection_params}, clap, hidden_2, ones, mask_2)

    def teacher_forced(self, gpt2_params, prompt, prompt_mask, target):
        """Predictions ``[B, N, D]`` of LOA tokens ``0 .. N-1`` given the prompt and tokens ``0 .. N-2``."""
        n = target.shape[1]
        inputs = jnp.concatenate([prompt, target[:, :-1].astype(prompt.dtype)], axis=1)
        mask = jnp.concatenate([prompt_mask, jnp.ones((prompt.shape[0], n - 1), prompt_mask.dtype)], axis=1)
        if self.speech:
            # The phoneme stream has the same fixed, padded length at inference: no packing (see the module
            # docstring); the prompt's last entry (the phoneme stream's EOS) predicts LOA token 0.
            hidden = self.gpt2.apply({"params": gpt2_params}, inputs, mask)
            return hidden[:, prompt.shape[1] - 1:prompt.shape[1] - 1 + n]
        packed, packed_mask = pack_sequences(inputs, mask)
        hidden = self.gpt2.apply({"params": gpt2_params}, packed, packed_mask)
        last_prompt = jnp.sum(prompt_mask > 0, axis=1) - 1  # the last real prompt token predicts LOA token 0
        index = last_prompt[:, None] + jnp.arange(n)[None, :]
        return jnp.take_along_axis(hidden, index[..., None], axis=1)

    def loss_and_predictions(self, params, frozen, batch, key, cond_dropout: float):
        """``(loss, predictions [B, N, D], target [B, N, D], dropped [B], metrics)`` for group params holding
        ``projection`` and ``gpt2``."""
        b = batch["fbank"].shape[0]
        dropped = jax.random.bernoulli(key, cond_dropout, (b,))
        clap, hidden_2, mask_2 = self.text_streams(frozen, batch, dropped)
        prompt, prompt_mask = self.prompt(params["projection"], clap, hidden_2, mask_2)
        target = self.loa(frozen["audiomae"], batch["fbank"], self.lam)
        target = jnp.where(dropped[:, None, None], 0.0, target)
        pred = self.teacher_forced(params["gpt2"], prompt, prompt_mask, target)
        loss = loa_regression_loss(pred, target, self.loss_kind)
        cos = jnp.sum(pred * target, -1) / (jnp.linalg.norm(pred, axis=-1) * jnp.linalg.norm(target, axis=-1) + 1e-6)
        keep = 1.0 - dropped.astype(jnp.float32)
        metrics = {"loa_cosine": jnp.sum(cos.mean(-1) * keep) / jnp.maximum(keep.sum(), 1.0),
                   "target_norm": jnp.mean(jnp.linalg.norm(target, axis=-1))}
        return loss, pred, target, dropped, metrics


def _phoneme_length(config, projection_config) -> int:
    """The fixed phoneme length of the speech models: the projection's learned table length (``text.vits_max_length``
    may restate it)."""
    if not projection_config.use_learned_position_embedding:
        raise ConfigError("config error: model.text_encoder_2='vits' needs "
                          "model.projection.use_learned_position_embedding=True with max_seq_length = the phoneme "
                          "length (the speech models add a learned position table to the VITS stream, and the "
                          "inference pipeline requires it)")
    length = int(projection_config.max_seq_length)
    explicit = int(config.text.get("vits_max_length", 0) or 0)
    if explicit and explicit != length:
        raise ConfigError(f"config error: text.vits_max_length={explicit} != model.projection.max_seq_length={length}: "
                          "the projection's position table accepts exactly max_seq_length phonemes")
    return length


def _token_count(mae_config, lam) -> int:
    return loa_token_count(lam, mae_config.grid)


class GPT2Stage(Stage):
    name = "gpt2"
    group_components = {"gpt2": ("projection", "gpt2")}
    frozen_components = ("clap", "t5", "audiomae")  # "vits" in place of "t5" for the speech models (per instance)
    reads_from = {"audiomae": "audiomae"}

    def __init__(self, config, dtype=jnp.float32):
        self.frozen_components = ("clap", common.text_encoder_2(config), "audiomae")
        self.passenger_components = common.passenger_components(config, Stage.passenger_components)
        super().__init__(config, dtype)
        self.text = TextToLOA(self, config, dtype)
        self.cond_dropout = float(config.gpt2.cond_dropout)

    def host_batch(self, batch):
        return self.text.host_batch(batch, self.model_configs["audiomae"])

    def loss(self, group, params, frozen, extras, batch, rng, step, options):
        loss, _, _, _, metrics = self.text.loss_and_predictions(params["gpt2"], frozen, batch, rng, self.cond_dropout)
        return loss, metrics

    def held_out_losses(self, params, frozen, extras, batch, key, per_clip):
        """The LOA regression loss and cosine without condition dropout."""
        loss, _, _, _, metrics = self.text.loss_and_predictions(params["gpt2"], frozen, batch, key, 0.0)
        size = batch[held_out.CLIP_INDEX].shape[0]
        return {"loss": held_out.batch_mean(loss, size), "loa_cosine": held_out.batch_mean(metrics["loa_cosine"], size)}


STAGE = GPT2Stage
