"""Tiny random-weight AudioLDM 2 checkpoints in the diffusers layout, built offline.

``build_reference_pipeline(kind)`` assembles diffusers' ``AudioLDM2Pipeline`` from small configs (every model a few
thousand to a few hundred thousand parameters) with tokenizers trained here on a dozen sentences:

- ``tokenizer``: byte-level BPE (``tokenizers``) -> ``RobertaTokenizer`` (CLAP's text tower);
- ``tokenizer_2``: a sentencepiece unigram model -> ``T5Tokenizer``, or, for ``kind="speech"``, a ``VitsTokenizer``
  over a hand-written character vocabulary (no phonemizer needed).

``save_checkpoint(pipe, folder)`` writes it with ``save_pretrained`` and rewrites the language model as
``GPT2Model``, the class the published checkpoints store (diffusers' generation loop itself needs the
``GPT2LMHeadModel`` the in-memory reference keeps). ``tiny_checkpoint(folder, kind)`` does both.

Kinds:
  "text"   every UNet branch: a plain down/up block, cross-attention blocks with a self-attention-only entry, the
           GPT-2 (LOA) stream and the masked T5 stream: ``cross_attention_dim [[null, 32, 24]] x 2``;
  "large"  the large checkpoint's shape: ``transformer_layers_per_block 2``, ``[[null, 32, 24, null]] x 2``;
  "speech" a VITS phoneme encoder as ``text_encoder_2``, a projection with a learned position table, a UNet that
           attends to the LOA stream only, and a longer LOA (``max_new_tokens`` 12).

Usable outside the tests (quickstart, training smoke runs)::

    from tests.pipeline_fixtures import tiny_checkpoint   # or with tests/ on sys.path
    folder, reference = tiny_checkpoint("/tmp/tiny-audioldm2")

Requires torch, diffusers, transformers, tokenizers and sentencepiece (the project's test extra).
"""

from __future__ import annotations

import io
import json
import os
import string
import tempfile
from pathlib import Path

import numpy as np
import pytest

from audioldm2_jax import AudioLDM2Pipeline

KINDS = ("text", "large", "speech")

# Widths of the tiny models. The UNet's context dims follow them: LM_DIM for the LOA stream, T5_DIM for the T5 one.
LM_DIM = 32
T5_DIM = 24
VITS_DIM = 16
CLAP_DIM = 16
MEL_BINS = 16  # vocoder model_in_dim: latents are [B, 8, T/4, MEL_BINS/4]

CLAP_MAX_LENGTH = 24  # CLAP tokenizer model_max_length (the reference pads to it)
T5_MAX_LENGTH = 16  # T5 tokenizer model_max_length (prompts longer than this are truncated)
VITS_MAX_LENGTH = 20  # VITS tokenizer model_max_length = projection max_seq_length

CORPUS = [
    "a dog barks in the distance", "rain falls on a tin roof", "techno music with a strong upbeat tempo",
    "birds sing at dawn near a quiet river", "a man speaks softly into a microphone", "thunder rolls over the hills",
    "the quick brown fox jumps over the lazy dog", "a violin plays a slow sad melody", "cars pass on a wet street",
    "children laugh and play in a park", "waves crash against rocks", "a cat purrs next to a warm fire",
]


# ----------------------------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------------------------


def roberta_tokenizer(model_max_length: int = CLAP_MAX_LENGTH, vocab_size: int = 300):
    """Byte-level BPE trained on ``CORPUS``: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, ``<mask>`` 4, as
    RoBERTa (CLAP's ``pad_token_id`` 1)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 2, vocab_size=vocab_size, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        bpe.save_model(tmp)
        return RobertaTokenizer(vocab=os.path.join(tmp, "vocab.json"), merges=os.path.join(tmp, "merges.txt"),
                                model_max_length=model_max_length)


def t5_tokenizer(model_max_length: int = T5_MAX_LENGTH, vocab_size: int = 60):
    """A sentencepiece unigram model trained on ``CORPUS`` with T5's special ids (``<pad>`` 0, ``</s>`` 1,
    ``<unk>`` 2), wrapped as ``T5Tokenizer`` (no sentinel ids)."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 2), model_writer=model, vocab_size=vocab_size,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, minloglevel=2)
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def vits_tokenizer(model_max_length: int = VITS_MAX_LENGTH):
    """Characters as "phonemes": ``<pad>`` 0 (the id the pipeline turns into the end-of-phonemes mark 182 at the
    first padded position), space, a-z, ``<unk>``. ``add_blank`` off so that the padding follows the text."""
    from transformers import VitsTokenizer

    symbols = ["<pad>", " "] + list(string.ascii_lowercase) + ["<unk>"]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "vocab.json")
        with open(path, "w") as f:
            json.dump({s: i for i, s in enumerate(symbols)}, f)
        return VitsTokenizer(path, add_blank=False, normalize=True, phonemize=False,
                             model_max_length=model_max_length)


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------


def _perturb(module, scale: float, only=None):
    """Adds noise to every parameter (or those whose name contains one of ``only``): norms start as identity and
    many biases as zero in the references' initialisers, and parity checks should exercise every parameter."""
    import torch

    with torch.no_grad():
        for name, p in module.named_parameters():
            if only is None or any(key in name for key in only):
                p.add_(scale * torch.randn_like(p))


def _unet(kind: str, sample_size: int):
    from diffusers.pipelines.audioldm2.modeling_audioldm2 import AudioLDM2UNet2DConditionModel

    # Two levels cover every block type (plain and cross-attention down / up blocks, the cross-attention mid
    # block); an odd latent height exercises the forced upsampling size. Compile time grows with the number of
    # Transformer2D blocks, so the tests keep it at the minimum that still has each routing.
    common = dict(
        sample_size=sample_size, in_channels=8, out_channels=8, block_out_channels=[16, 32], layers_per_block=1,
        norm_num_groups=8, attention_head_dim=4, down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"])
    if kind == "text":
        cross = dict(cross_attention_dim=[[None, LM_DIM, T5_DIM]] * 2)
    elif kind == "large":
        cross = dict(cross_attention_dim=[[None, LM_DIM, T5_DIM, None]] * 2, transformer_layers_per_block=2)
    else:
        cross = dict(cross_attention_dim=LM_DIM)
    unet = AudioLDM2UNet2DConditionModel(**common, **cross).eval()
    _perturb(unet, 0.05)
    return unet


def _vae():
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(in_channels=1, out_channels=1, down_block_types=["DownEncoderBlock2D"] * 3,
                        up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[8, 16, 16], layers_per_block=1,
                        latent_channels=8, norm_num_groups=4, sample_size=64,
                        scaling_factor=0.4110932946205139).eval()
    _perturb(vae, 0.05)
    return vae


def _vocoder():
    import torch
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    config = SpeechT5HifiGanConfig(model_in_dim=MEL_BINS, sampling_rate=16000, upsample_initial_channel=32,
                                   upsample_rates=[5, 4, 2, 2, 2], upsample_kernel_sizes=[16, 16, 8, 4, 4],
                                   resblock_kernel_sizes=[3, 7], resblock_dilation_sizes=[[1, 3], [1, 3]],
                                   normalize_before=False)
    vocoder = SpeechT5HifiGan(config).eval()
    with torch.no_grad():
        # The reference initialises convolutions with std 0.01, under which activations shrink ~100x per layer and
        # the waveform is rounding noise around the last bias. Fan-in scaled weights keep the signal alive; then
        # the last convolution is calibrated on a random mel so that the waveform is centred with a spread of ~0.3
        # (tanh neither saturated nor negligible), and the comparison is not made on rounding noise.
        for name, p in vocoder.named_parameters():
            if name.endswith("weight"):
                fan_in = p.shape[0] * p.shape[2] if "upsampler" in name else p.shape[1] * p.shape[2]
                p.copy_(torch.randn_like(p) * (1.0 / fan_in) ** 0.5)
            elif name.endswith("bias"):
                p.copy_(0.02 * torch.randn_like(p))
        captured = []
        hook = vocoder.conv_post.register_forward_hook(lambda module, args, out: captured.append(out))
        vocoder(0.4 * torch.randn(2, 40, MEL_BINS))
        hook.remove()
        pre_tanh = captured[0]
        gain = 0.3 / float(pre_tanh.std())
        vocoder.conv_post.weight.mul_(gain)
        vocoder.conv_post.bias.copy_(gain * (vocoder.conv_post.bias - pre_tanh.mean()))
    return vocoder


def _clap():
    from transformers import ClapConfig, ClapModel

    config = ClapConfig(
        text_config=dict(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=CLAP_MAX_LENGTH + 8, layer_norm_eps=1e-5),
        audio_config=dict(num_mel_bins=16, spec_size=64, window_size=4, patch_embeds_hidden_size=8,
                          depths=[2, 2, 1], num_attention_heads=[2, 2, 4], hidden_size=32),
        projection_dim=CLAP_DIM)
    clap = ClapModel(config).eval()
    _perturb(clap, 0.3, only=("relative_position_bias_table", "LayerNorm", ".norm", "layernorm"))
    return clap


def clap_feature_extractor():
    from transformers import ClapFeatureExtractor

    # A 2 s window (201 frames) fits the tiny Swin input (64 x 4 = 256 frames); the published one is 10 s.
    return ClapFeatureExtractor(feature_size=16, sampling_rate=48000, hop_length=480, max_length_s=2,
                                fft_window_size=1024, frequency_min=50, frequency_max=14000, truncation="rand_trunc",
                                padding="repeatpad")


def _t5():
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=64, d_model=T5_DIM, d_kv=8, d_ff=32, num_layers=2, num_heads=3,
                      feed_forward_proj="gated-gelu", relative_attention_num_buckets=8,
                      relative_attention_max_distance=16, dropout_rate=0.0)
    t5 = T5EncoderModel(config).eval()
    _perturb(t5, 0.3, only=("layer_norm",))
    return t5


def _vits():
    from transformers import VitsConfig, VitsModel

    config = VitsConfig(
        vocab_size=183, hidden_size=VITS_DIM, num_hidden_layers=2, num_attention_heads=2, window_size=3, ffn_dim=24,
        ffn_kernel_size=3, flow_size=8, upsample_initial_channel=8, upsample_rates=[2], upsample_kernel_sizes=[4],
        resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]], depth_separable_num_layers=1,
        duration_predictor_filter_channels=8, duration_predictor_num_flows=1, prior_encoder_num_flows=1,
        prior_encoder_num_wavenet_layers=1, posterior_encoder_num_wavenet_layers=1, spectrogram_bins=9)
    vits = VitsModel(config).eval()
    _perturb(vits.text_encoder, 0.3, only=("layer_norm",))
    return vits


def _language_model(max_new_tokens: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_embd=LM_DIM, n_layer=2, n_head=4, n_positions=96, vocab_size=50, bos_token_id=0,
                        eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        max_new_tokens=max_new_tokens)
    lm = GPT2LMHeadModel(config).eval()
    _perturb(lm.transformer, 0.1, only=("ln_", "bias"))
    return lm


def _projection(speech: bool):
    from diffusers.pipelines.audioldm2.modeling_audioldm2 import AudioLDM2ProjectionModel

    if speech:
        projection = AudioLDM2ProjectionModel(CLAP_DIM, VITS_DIM, LM_DIM, use_learned_position_embedding=True,
                                              max_seq_length=VITS_MAX_LENGTH)
    else:
        projection = AudioLDM2ProjectionModel(CLAP_DIM, T5_DIM, LM_DIM)
    _perturb(projection.eval(), 0.5, only=("embed",))  # SOS / EOS start as ones, the position table as zeros
    return projection


def scheduler():
    """The published DDIM configuration."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear",
                         steps_offset=1, set_alpha_to_one=False, clip_sample=False, timestep_spacing="leading",
                         prediction_type="epsilon")


def build_reference_pipeline(kind: str = "text", seed: int = 0, sample_size: int = 16):
    """diffusers' ``AudioLDM2Pipeline`` with tiny random weights (float32, eval mode, on CPU).

    ``sample_size`` is the UNet's latent height: the default duration is ``sample_size * 4 * 0.01`` s.
    """
    import torch
    from diffusers import AudioLDM2Pipeline

    if kind not in KINDS:
        raise ValueError(f"unknown tiny checkpoint kind {kind!r}; choose one of {KINDS}")
    speech = kind == "speech"
    torch.manual_seed(seed)
    return AudioLDM2Pipeline(
        vae=_vae(), text_encoder=_clap(), text_encoder_2=_vits() if speech else _t5(),
        projection_model=_projection(speech), language_model=_language_model(12 if speech else 8),
        tokenizer=roberta_tokenizer(), tokenizer_2=vits_tokenizer() if speech else t5_tokenizer(),
        feature_extractor=clap_feature_extractor(), unet=_unet(kind, sample_size), scheduler=scheduler(),
        vocoder=_vocoder())


def save_checkpoint(pipe, folder: str | os.PathLike, language_model_class: str = "GPT2Model") -> Path:
    """``pipe.save_pretrained(folder)``; the language model is stored as ``language_model_class`` (the published
    ``GPT2Model`` by default: same weights without the LM head, keys without the ``transformer.`` prefix)."""
    folder = Path(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    if language_model_class == "GPT2Model":
        import shutil

        from transformers import GPT2Model

        base = GPT2Model(pipe.language_model.config)
        base.load_state_dict(pipe.language_model.transformer.state_dict())
        shutil.rmtree(folder / "language_model")
        base.save_pretrained(folder / "language_model")
        index = json.loads((folder / "model_index.json").read_text())
        index["language_model"] = ["transformers", "GPT2Model"]
        (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def tiny_checkpoint(folder: str | os.PathLike, kind: str = "text", seed: int = 0, sample_size: int = 16):
    """Builds and saves a tiny checkpoint: ``(folder, reference_pipeline)``."""
    pipe = build_reference_pipeline(kind, seed=seed, sample_size=sample_size)
    return save_checkpoint(pipe, folder), pipe


def checkpoint_and_pipeline_fixtures(kind: str):
    """Module-scoped pytest fixtures ``(checkpoint, pipe)`` for a test module: ``checkpoint`` is
    ``tiny_checkpoint(<tmp>/tiny-<kind>, kind)`` (folder, diffusers reference) and ``pipe`` our pipeline loaded from
    that folder. Use as ``checkpoint, pipe = checkpoint_and_pipeline_fixtures("text")``."""

    @pytest.fixture(scope="module")
    def checkpoint(tmp_path_factory):
        return tiny_checkpoint(tmp_path_factory.mktemp(f"tiny-{kind}"), kind)

    @pytest.fixture(scope="module")
    def pipe(checkpoint):
        return AudioLDM2Pipeline.from_pretrained(checkpoint[0])

    return checkpoint, pipe


def reference_latents(batch: int, duration_s: float, seed: int = 0, latent_width: int = MEL_BINS // 4) -> np.ndarray:
    """Initial latents in the reference layout ``[B, 8, T/4, W]`` for a duration (T rounded as the pipeline does)."""
    frames = int(duration_s / 0.01)
    frames = -(-frames // 4) * 4
    return np.random.default_rng(seed).standard_normal((batch, 8, frames // 4, latent_width)).astype(np.float32)



# ----------------------------------------------------------------------------------------------------------------
# diffusers' own fast-test components (tests/pipelines/audioldm2/test_audioldm2.py, ``get_dummy_components``)
# ----------------------------------------------------------------------------------------------------------------

# The upstream CLAP audio tower: a Swin window (4) larger than the token grid after the first merge (2 x 2) and a
# 4-channel patch embedding (the fused model's input). "plain" is the same tower without those two features.
UPSTREAM_CLAP_AUDIO = {
    "upstream": dict(spec_size=8, window_size=4, num_mel_bins=8, intermediate_size=37, layer_norm_eps=1e-05,
                     depths=[1, 1], num_attention_heads=[1, 1], num_hidden_layers=1, hidden_size=192, projection_dim=8,
                     patch_size=2, patch_stride=2, patch_embed_input_channels=4),
    "plain": dict(spec_size=8, window_size=2, num_mel_bins=8, intermediate_size=37, layer_norm_eps=1e-05,
                  depths=[1, 1], num_attention_heads=[1, 1], num_hidden_layers=1, hidden_size=192, projection_dim=8,
                  patch_size=2, patch_stride=2, patch_embed_input_channels=1),
}


def calibrate_vocoder(vocoder, mel_bins: int, seed: int = 0):
    """Rescales a ``SpeechT5HifiGan`` in place so that its waveform is a signal, not rounding noise: the
    reference's std-0.01 initialisation shrinks activations ~100x per layer (outputs ~1e-6). Weights get fan-in
    scaled normal values and biases 0.02-scaled ones, then ``conv_post`` is set so that the pre-tanh output of a
    random mel is centred with a spread of 0.3."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vocoder.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if name.endswith("weight"):
                fan_in = p.shape[0] * p.shape[2] if "upsampler" in name else p.shape[1] * p.shape[2]
                p.copy_(noise * fan_in ** -0.5)
            elif name.endswith("bias"):
                p.copy_(0.02 * noise)
        outputs = []
        hook = vocoder.conv_post.register_forward_hook(lambda module, args, out: outputs.append(out))
        vocoder(0.4 * torch.randn((2, 40, mel_bins), generator=generator))
        hook.remove()
        gain = 0.3 / float(outputs[0].std())
        vocoder.conv_post.weight.mul_(gain)
        vocoder.conv_post.bias.copy_(gain * (vocoder.conv_post.bias - outputs[0].mean()))
    return vocoder


def upstream_feature_extractor(clap_audio: str = "upstream"):
    """The upstream test loads ``hf-internal-testing/tiny-random-ClapModel``'s extractor with ``hop_length=7900``
    (not downloadable here): transformers' ``ClapFeatureExtractor`` defaults (``fusion``, 64 mel bins, 10 s at
    48 kHz) with that hop stand in for it. For the "plain" CLAP tower, ``rand_trunc`` and its 8 mel bins."""
    from transformers import ClapFeatureExtractor

    if clap_audio == "upstream":
        return ClapFeatureExtractor(hop_length=7900)
    return ClapFeatureExtractor(feature_size=8, hop_length=7900, truncation="rand_trunc")


def build_upstream_pipeline(clap_audio: str = "upstream", seed: int = 0):
    """diffusers' ``AudioLDM2Pipeline`` from the upstream fast test's configs (UNet with per-block integer
    ``cross_attention_dim (8, 16)`` and a plain first block, 2-level VAE with 4 latent channels, CLAP with an
    8-wide text tower, 1-layer T5 / GPT-2, a hop-4 HiFi-GAN, DDIM 0.00085..0.012 without ``steps_offset``), with
    tokenizers trained here in place of the hub's tiny ones (``model_max_length`` 77 as there).

    Random weights as the reference initialises them, except: UNet, VAE and projection get small noise on every
    parameter (norms and biases start as identity / zero), and the vocoder is calibrated
    (:func:`calibrate_vocoder`). ``clap_audio``: "upstream" or "plain" (see ``UPSTREAM_CLAP_AUDIO``).
    """
    import torch
    from diffusers import (AudioLDM2Pipeline, AudioLDM2ProjectionModel, AudioLDM2UNet2DConditionModel, AutoencoderKL,
                           DDIMScheduler)
    from transformers import (ClapConfig, ClapModel, GPT2Config, GPT2LMHeadModel, SpeechT5HifiGan,
                              SpeechT5HifiGanConfig, T5Config, T5EncoderModel)

    torch.manual_seed(seed)
    unet = AudioLDM2UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8, sample_size=32, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=(8, 16))
    scheduler_ = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                               set_alpha_to_one=False)
    vae = AutoencoderKL(block_out_channels=[8, 16], in_channels=1, out_channels=1, norm_num_groups=8,
                        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
                        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4)
    text_config = dict(bos_token_id=0, eos_token_id=2, hidden_size=8, intermediate_size=37, layer_norm_eps=1e-05,
                       num_attention_heads=1, num_hidden_layers=1, pad_token_id=1, vocab_size=1000, projection_dim=8)
    clap = ClapModel(ClapConfig(text_config=text_config, audio_config=UPSTREAM_CLAP_AUDIO[clap_audio],
                                projection_dim=16))
    t5 = T5EncoderModel(T5Config(vocab_size=32100, d_model=32, d_ff=37, d_kv=8, num_heads=1, num_layers=1))
    language_model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_head=1, n_layer=1, vocab_size=1000, n_ctx=99,
                                                n_positions=99))
    language_model.config.max_new_tokens = 8
    projection = AudioLDM2ProjectionModel(text_encoder_dim=16, text_encoder_1_dim=32, langauge_model_dim=16)
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=8, sampling_rate=16000, upsample_initial_channel=16, upsample_rates=[2, 2],
        upsample_kernel_sizes=[4, 4], resblock_kernel_sizes=[3, 7], resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]],
        normalize_before=False))
    for module in (unet, vae, clap, t5, language_model, projection, vocoder):
        module.eval()
    _perturb(unet, 0.05)
    _perturb(vae, 0.05)
    _perturb(projection, 0.5, only=("embed",))
    calibrate_vocoder(vocoder, mel_bins=8, seed=seed)
    return AudioLDM2Pipeline(
        unet=unet, scheduler=scheduler_, vae=vae, text_encoder=clap, text_encoder_2=t5,
        tokenizer=roberta_tokenizer(model_max_length=77), tokenizer_2=t5_tokenizer(model_max_length=77),
        feature_extractor=upstream_feature_extractor(clap_audio), language_model=language_model,
        projection_model=projection, vocoder=vocoder)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write a tiny random-weight AudioLDM 2 checkpoint.")
    parser.add_argument("folder")
    parser.add_argument("--kind", default="text", choices=KINDS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path, _ = tiny_checkpoint(args.folder, args.kind, args.seed)
    print(f"wrote {args.kind} checkpoint to {path}")
