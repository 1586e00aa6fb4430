"""AudioLDM2Pipeline on checkpoints built from diffusers' own AudioLDM 2 fast-test components
(tests/pipelines/audioldm2/test_audioldm2.py, ``get_dummy_components``; see ``pipeline_fixtures.
build_upstream_pipeline``): a UNet with per-block integer ``cross_attention_dim (8, 16)`` whose first entry belongs
to a plain DownBlock2D, 8 heads of width 2, a 2-level VAE with 4 latent channels, a hop-4 vocoder (256 samples by
default), DDIM without ``steps_offset``; the upstream inputs (2 steps, guidance 6). diffusers' pipeline, saved with
``save_pretrained`` and loaded by ours, against itself from the same initial latents.

Two variants: the CLAP audio tower without the features the CLAP port gained separately (Swin window larger than
the token grid, 4-channel fused input), so that the UNet side is proven on its own, and the exact upstream configs.
The upstream test never ranks waveforms (one per prompt): its CLAP audio tower cannot run on its extractor's
features, in diffusers either, so neither does this one.
"""

import numpy as np
import torch
from conftest import assert_close
from pipeline_fixtures import build_upstream_pipeline, save_checkpoint

from audioldm2_jax import AudioLDM2Pipeline

# The upstream prompt, and a second one of another length (T5 padding and its mask in the batch).
PROMPTS = ["A hammer hitting a wooden surface", "a dog barks in the distance"]
OTHER_PROMPTS = ["rain falls on a tin roof", "birds sing at dawn near a quiet river"]
CALL = dict(num_inference_steps=2, guidance_scale=6.0)  # upstream get_dummy_inputs
# Latents [B, 4, T/2, 8/2]: the default duration is sample_size 32 x VAE factor 2 x hop 4 / 16 kHz = 0.016 s, 64 frames.
LATENTS = np.random.default_rng(7).standard_normal((2, 4, 32, 4)).astype(np.float32)
REL = 1e-4  # the project's fp32 parity criterion: max abs error <= 1e-4 x max |reference|


def _reference(pipe, prompts, output_type="np"):
    with torch.no_grad():
        return pipe(prompts, latents=torch.from_numpy(LATENTS), output_type=output_type, **CALL).audios


def _check(reference, folder):
    pipe = AudioLDM2Pipeline.from_pretrained(folder)
    assert pipe.unet_config.cross_attention_dim == ((8,), (16,)) and pipe.context_dims == (16, None)

    expected = _reference(reference, PROMPTS)
    final_latents = _reference(reference, PROMPTS, output_type="latent")
    with torch.no_grad():
        expected_mel = reference.vae.decode(final_latents / reference.vae.config.scaling_factor).sample[:, 0].numpy()
    waveforms, log_mel = pipe(PROMPTS, latents=LATENTS, return_mel=True, **CALL)
    assert waveforms.shape == expected.shape == (2, 256)  # the upstream test's length
    mel_err = assert_close(log_mel, expected_mel, rel=REL, what="log-mel")
    err = assert_close(waveforms, expected, rel=REL, what="waveforms")
    print(f"log-mel: max abs error / scale {mel_err:.1e}; waveform: max abs error "
          f"{np.abs(waveforms - expected).max():.2e} (scale {np.abs(expected).max():.3f}, relative {err:.1e})")

    # The comparison sees the conditioning: other prompts move the reference's waveforms far beyond the tolerance.
    other = _reference(reference, OTHER_PROMPTS)
    assert np.abs(other - expected).max() > 10 * REL * np.abs(expected).max()
    assert expected.std() > 0.05  # a signal, not rounding noise (calibrated vocoder)


def test_upstream_unet_with_plain_clap_audio(tmp_path):
    """Every upstream config but the CLAP audio tower's window / input channels; stored as the published
    checkpoints are (language model as GPT2Model)."""
    reference = build_upstream_pipeline("plain")
    _check(reference, save_checkpoint(reference, tmp_path / "checkpoint"))


def test_exact_upstream_configs(tmp_path):
    """Exactly the upstream components (the hub's tiny tokenizers and CLAP feature extractor replaced by local
    equivalents), stored by ``save_pretrained`` as is (language model as GPT2LMHeadModel)."""
    reference = build_upstream_pipeline("upstream")
    reference.save_pretrained(tmp_path / "checkpoint", safe_serialization=True)
    _check(reference, tmp_path / "checkpoint")
