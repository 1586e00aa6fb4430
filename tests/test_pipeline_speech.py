"""AudioLDM2Pipeline against diffusers' on a tiny speech checkpoint: a VITS phoneme encoder as text_encoder_2
(end-of-phonemes mark, learned position table in the projection, all-zero negative phoneme stream), a UNet that
attends to the LOA stream only, a 12-step LOA; DDIM with guidance and negative prompts."""

import numpy as np
import pytest
import torch
from conftest import assert_close
from pipeline_fixtures import checkpoint_and_pipeline_fixtures, reference_latents


PROMPTS = ["a man speaks softly", "a woman reads a story in a park"]
TRANSCRIPTIONS = ["hello world", "the quick brown fox jumps over the lazy dog"]  # the second is truncated (20)
DURATION = 0.44  # 44 frames: latent height 11


checkpoint, pipe = checkpoint_and_pipeline_fixtures("speech")


def test_speech_matches_diffusers(checkpoint, pipe):
    _, reference = checkpoint
    assert pipe.is_speech and pipe.context_dims == (32, None) and pipe.language_model_config.max_new_tokens == 12
    latents = reference_latents(2, DURATION, seed=3)
    kwargs = dict(negative_prompt=["", "noise"], transcription=TRANSCRIPTIONS, audio_length_in_s=DURATION,
                  num_inference_steps=3, guidance_scale=3.0)
    with torch.no_grad():
        expected = reference(PROMPTS, latents=torch.from_numpy(latents), output_type="np", **kwargs).audios
    ours = pipe(PROMPTS, latents=latents, **kwargs)
    assert ours.shape == expected.shape == (2, 7040)
    err = assert_close(ours, expected, rel=1e-4, what="speech waveform")
    print(f"speech: max abs error {np.abs(ours - expected).max():.2e} (scale {np.abs(expected).max():.3f}, "
          f"relative {err:.1e})")
    assert expected.std() > 0.05
    # The transcription reaches the audio (same prompts, other words). It acts through the LOA only (this UNet, as
    # the published speech UNets, does not attend to the phoneme stream), so less than the prompts do, but far above
    # the parity error.
    other = pipe(PROMPTS, latents=latents, **dict(kwargs, transcription="good morning"))
    assert np.abs(other - ours).max() > 1e-3


def test_speech_needs_a_transcription(pipe, monkeypatch):
    monkeypatch.setattr(pipe, "_compile", lambda *a, **k: pytest.fail("compiled before checking the input"))
    with pytest.raises(ValueError, match="speech checkpoint.*transcription"):
        pipe(PROMPTS, audio_length_in_s=DURATION)
    with pytest.raises(ValueError, match="transcription: 3 entries for 2 prompts"):
        pipe(PROMPTS, transcription=["a", "b", "c"], audio_length_in_s=DURATION)
