"""AudioLDM2Pipeline against diffusers' on a tiny checkpoint shaped like audioldm2-large: two transformer layers
per block and a trailing self-attention-only entry (``cross_attention_dim [[null, 32, 24, null]] x 2``); PLMS
(PNDM) without guidance, a duration that is not a multiple of 40 ms, and the LOA length overridden."""

import numpy as np
import pytest
import torch
from conftest import assert_close
from diffusers import PNDMScheduler
from pipeline_fixtures import reference_latents, tiny_checkpoint

from audioldm2_jax import AudioLDM2Pipeline

PROMPTS = ["techno music with a strong upbeat tempo", "waves crash against rocks"]
DURATION = 0.405  # int(40.5) = 40 frames; the vocoder's 6432 samples are shorter than 0.405 s (6480): kept whole


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny-large"), "large")


def test_large_matches_diffusers(checkpoint):
    folder, reference = checkpoint
    pipe = AudioLDM2Pipeline.from_pretrained(folder)
    assert pipe.unet_config.transformer_layers_per_block == (2, 2)
    assert pipe.unet_config.cross_attention_dim == ((None, 32, 24, None),) * 2
    latents = reference_latents(2, DURATION, seed=4)
    # PLMS, steps + 1 evaluations: PNDM without its Runge-Kutta warm-up (the class default), on both sides.
    reference.scheduler = PNDMScheduler.from_config(reference.scheduler.config, skip_prk_steps=True)
    pipe.scheduler_config = dict(pipe.scheduler_config, skip_prk_steps=True)
    kwargs = dict(audio_length_in_s=DURATION, num_inference_steps=3, guidance_scale=1.0, max_new_tokens=5)
    with torch.no_grad():
        expected = reference(PROMPTS, latents=torch.from_numpy(latents), output_type="np", **kwargs).audios
    ours = pipe(PROMPTS, latents=latents, scheduler="pndm", **kwargs)
    assert ours.shape == expected.shape == (2, 6432)
    err = assert_close(ours, expected, rel=1e-4, what="large-style waveform")
    print(f"large: max abs error {np.abs(ours - expected).max():.2e} (scale {np.abs(expected).max():.3f}, "
          f"relative {err:.1e})")
    assert expected.std() > 0.05
