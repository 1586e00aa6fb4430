"""AudioLDM2Pipeline end to end against diffusers' AudioLDM2Pipeline on a tiny random-weight text-to-audio
checkpoint (every UNet routing), given the same initial latents: DDIM and DPM-Solver++ with classifier-free
guidance and negative prompts, CLAP ranking of several waveforms per prompt, seeded noise, the longest LOA GPT-2's
position table allows; bad input refused before compiling, and a diverged (NaN) sample raised, naming its prompt."""

import copy

import jax
import numpy as np
import pytest
import torch
from conftest import assert_close
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from pipeline_fixtures import checkpoint_and_pipeline_fixtures, reference_latents

from audioldm2_jax.audio.clap_features import clap_input_features, resample_for_clap
from audioldm2_jax.pipeline import NonFiniteOutputError, Timings

# The second prompt is longer than the T5 tokenizer's 16 tokens (truncated, and it sets the batch's T5 length) and
# than CLAP's 24; the negatives pad / truncate to the prompts' T5 length as in the reference.
PROMPTS = ["a dog barks", "rain falls on a tin roof while thunder rolls over the hills and a cat purrs by the fire"]
NEGATIVES = ["", "birds sing at dawn"]
# 36 mel frames: an odd latent height (9) exercises the UNet's forced upsampling size; the vocoder's 5792 samples
# are cut to 0.36 s = 5760.
DURATION = 0.36
STEPS = 3


checkpoint, pipe = checkpoint_and_pipeline_fixtures("text")


def run_reference(reference, scheduler_class, latents, **kwargs):
    reference.scheduler = scheduler_class.from_config(reference.scheduler.config)
    with torch.no_grad():
        return reference(audio_length_in_s=DURATION, num_inference_steps=STEPS, latents=torch.from_numpy(latents),
                         output_type="np", **kwargs).audios


def test_ddim_with_negative_prompts_and_ranking(checkpoint, pipe, monkeypatch):
    """DDIM, guidance 3.5 with negative prompts, two prompts x two waveforms: our ranked output is the reference's
    unranked output reordered by the reference ClapModel's score of each waveform against its own prompt."""
    _, reference = checkpoint
    latents = reference_latents(4, DURATION, seed=2)
    # The reference's own ranking can hand a prompt another prompt's waveform; take its audio unranked.
    monkeypatch.setattr(reference, "score_waveforms", lambda text, audio, **kwargs: audio)
    unranked = run_reference(reference, DDIMScheduler, latents, prompt=PROMPTS, negative_prompt=NEGATIVES,
                             num_waveforms_per_prompt=2)
    out = pipe.generate(PROMPTS, negative_prompt=NEGATIVES, audio_length_in_s=DURATION, num_inference_steps=STEPS,
                        num_waveforms_per_prompt=2, latents=latents)
    ours = out.waveforms
    assert ours.dtype == np.float32 and ours.shape == unranked.shape == (4, 5760)

    features = clap_input_features(resample_for_clap(unranked, 16000, pipe.clap_features.sampling_rate),
                                   pipe.clap_features)
    tokens = reference.tokenizer(PROMPTS, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        logits = reference.text_encoder(**tokens, input_features=torch.from_numpy(features)[:, None]).logits_per_text
    own = np.stack([logits.numpy()[p, 2 * p:2 * p + 2] for p in range(2)])  # [prompt, its waveforms]
    order = np.concatenate([2 * p + np.argsort(-own[p], kind="stable") for p in range(2)])
    print(f"own-prompt scores {own.tolist()}, order {order.tolist()}")
    np.testing.assert_array_equal(out.ranking, order)
    assert sorted(order[:2]) == [0, 1] and sorted(order[2:]) == [2, 3]

    expected = unranked[order]
    err = assert_close(ours, expected, rel=1e-4, what="waveforms (ddim, ranked)")
    print(f"ddim: max abs error {np.abs(ours - expected).max():.2e} (scale {np.abs(expected).max():.3f}, "
          f"relative {err:.1e}); timings {out.timings}")
    assert expected.std() > 0.05  # the comparison is not made on silence


def test_dpm_solver_matches_diffusers(checkpoint, pipe):
    """DPM-Solver++ with the default negative prompt ("") and another guidance scale."""
    _, reference = checkpoint
    latents = reference_latents(2, DURATION, seed=1)
    expected = run_reference(reference, DPMSolverMultistepScheduler, latents, prompt=PROMPTS, guidance_scale=2.5)
    out = pipe.generate(PROMPTS, audio_length_in_s=DURATION, num_inference_steps=STEPS, guidance_scale=2.5,
                        scheduler="dpmsolver++", latents=latents)
    ours = out.waveforms
    assert ours.shape == expected.shape == (2, 5760)
    err = assert_close(ours, expected, rel=1e-4, what="waveform (dpmsolver++)")
    print(f"dpmsolver++: max abs error {np.abs(ours - expected).max():.2e} (scale {np.abs(expected).max():.3f}, "
          f"relative {err:.1e}); timings {out.timings}")
    # The guidance scale is a traced argument (no recompilation) and the conditioning reaches the audio.
    compiled = len(pipe._compiled)
    other = pipe.generate(PROMPTS, negative_prompt=NEGATIVES, audio_length_in_s=DURATION,
                          num_inference_steps=STEPS, guidance_scale=3.5, scheduler="dpmsolver++", latents=latents)
    assert len(pipe._compiled) == compiled and other.timings.compile == 0.0
    assert np.abs(other.waveforms[1] - ours[1]).max() > 1e-2


def test_a_given_loa_matches_diffusers_given_generated_prompt_embeds(checkpoint, pipe):
    """``loa=``: the prompts' LOA given instead of generated, the T5 stream still from the prompts and the negative
    prompts' LOA still generated: diffusers' pipeline given the prompts' own ``prompt_embeds`` and
    ``attention_mask`` (its ``encode_prompt``) with the same LOA as ``generated_prompt_embeds``."""
    _, reference = checkpoint
    latents = reference_latents(2, DURATION, seed=3)
    with torch.no_grad():
        t5, mask, generated = reference.encode_prompt(PROMPTS, "cpu", 1, False)
    rng = np.random.default_rng(0)
    loa = (rng.standard_normal(generated.shape) * generated.numpy().std()).astype(np.float32)
    expected = run_reference(reference, DPMSolverMultistepScheduler, latents, prompt_embeds=t5, attention_mask=mask,
                             generated_prompt_embeds=torch.from_numpy(loa), guidance_scale=3.5)
    out = pipe.generate(PROMPTS, audio_length_in_s=DURATION, num_inference_steps=STEPS, guidance_scale=3.5,
                        scheduler="dpmsolver++", latents=latents, loa=loa)
    err = assert_close(out.waveforms, expected, rel=1e-4, what="waveforms conditioned on a given LOA")
    print(f"given LOA: max abs error {np.abs(out.waveforms - expected).max():.2e} (relative {err:.1e})")
    own = pipe.generate(PROMPTS, audio_length_in_s=DURATION, num_inference_steps=STEPS, guidance_scale=3.5,
                        scheduler="dpmsolver++", latents=latents)
    assert np.abs(own.waveforms - out.waveforms).max() > 1e-2 * np.abs(expected).max()  # the LOA reaches the audio
    # GPT-2's own LOA given back reproduces the generated output
    again = pipe.generate(PROMPTS, audio_length_in_s=DURATION, num_inference_steps=STEPS, guidance_scale=3.5,
                          scheduler="dpmsolver++", latents=latents, loa=generated.numpy())
    assert_close(again.waveforms, own.waveforms, rel=1e-5, what="the generated LOA given back")


def test_return_mel_is_the_reference_vae_decoding(checkpoint, pipe):
    """``return_mel=True`` also returns the spectrogram the vocoder rendered: diffusers' final latents (its
    ``output_type="latent"``) decoded by its VAE, and the same waveforms as without it."""
    _, reference = checkpoint
    latents = reference_latents(2, DURATION, seed=4)
    kwargs = dict(prompt=PROMPTS, guidance_scale=2.5)
    reference.scheduler = DPMSolverMultistepScheduler.from_config(reference.scheduler.config)
    with torch.no_grad():
        final = reference(audio_length_in_s=DURATION, num_inference_steps=STEPS, latents=torch.from_numpy(latents),
                          output_type="latent", **kwargs).audios
        expected = reference.vae.decode(final / reference.vae.config.scaling_factor).sample[:, 0].numpy()
    call = dict(audio_length_in_s=DURATION, num_inference_steps=STEPS, scheduler="dpmsolver++", latents=latents,
                **kwargs)
    waveforms, log_mel = pipe(return_mel=True, **call)
    assert log_mel.dtype == np.float32 and log_mel.shape == expected.shape and expected.shape[:2] == (2, 36)
    err = assert_close(log_mel, expected, rel=1e-4, what="log-mel (dpmsolver++)")
    print(f"log-mel: max abs error {np.abs(log_mel - expected).max():.2e} (relative {err:.1e})")
    np.testing.assert_array_equal(waveforms, pipe(**call))


def test_seeded_noise(pipe):
    """Without latents the noise comes from the seeds: reproducible, and each clip's from its own seed only."""
    kwargs = dict(audio_length_in_s=DURATION, num_inference_steps=STEPS, scheduler="dpmsolver++")
    first = pipe(PROMPTS, seed=11, **kwargs)
    again = pipe(PROMPTS, seed=[11, 12], **kwargs)  # an int seed s means s + p for prompt p
    np.testing.assert_array_equal(first, again)
    assert np.abs(pipe(PROMPTS, seed=13, **kwargs) - first).max() > 1e-2
    frames = pipe.frames_for(DURATION)
    pair = pipe.initial_latents([11, 12], 2, frames)
    alone = pipe.initial_latents([12], 2, frames)
    np.testing.assert_array_equal(pair[2:], alone)
    assert pair.shape == (4, 9, 4, 8) and abs(float(pair.std()) - 1.0) < 0.1
    assert np.abs(pair[0] - pair[1]).max() > 0.5  # the waveforms of one prompt start from different noise


def test_bad_input_fails_before_compiling(pipe, monkeypatch):
    def no_compile(*args, **kwargs):
        raise AssertionError("compilation started before the input was checked")

    monkeypatch.setattr(pipe, "_compile", no_compile)
    cases = [
        (dict(prompt=[]), "empty"),
        (dict(prompt=PROMPTS, audio_length_in_s=0.0), "positive"),
        (dict(prompt=PROMPTS, audio_length_in_s=-2.0), "positive"),
        (dict(prompt=PROMPTS, audio_length_in_s=0.01), "shorter than"),
        (dict(prompt=PROMPTS, num_waveforms_per_prompt=0), "num_waveforms_per_prompt"),
        (dict(prompt=PROMPTS, transcription="hello"), "speech"),
        (dict(prompt=PROMPTS, latents=np.zeros((2, 8, 10, 4), np.float32)), r"latents have shape.*\(2, 8, 9, 4\)"),
        (dict(prompt=PROMPTS, num_waveforms_per_prompt=2, latents=np.zeros((2, 8, 9, 4), np.float32)),
         r"\(4, 8, 9, 4\)"),
        (dict(prompt=PROMPTS, scheduler="euler"), "unknown.*ddim"),
        (dict(prompt=PROMPTS, scheduler="dpmsolver++", eta=0.5), "eta"),
        (dict(prompt=PROMPTS, negative_prompt=["a", "b", "c"]), "negative_prompt: 3 entries for 2 prompts"),
        (dict(prompt=PROMPTS, seed=[1, 2, 3]), "seed"),
        (dict(prompt=PROMPTS, num_inference_steps=0), "num_inference_steps"),
        (dict(prompt=PROMPTS, max_new_tokens=0), "max_new_tokens"),
        (dict(prompt=PROMPTS, loa=np.zeros((3, 8, pipe.language_model_config.n_embd))),
         r"loa has shape \(3, 8, \d+\); 2 prompt\(s\) need \[2, tokens, \d+\]"),
        (dict(prompt=PROMPTS, loa=np.zeros((2, 8, pipe.language_model_config.n_embd + 1))), r"n_embd="),
        (dict(prompt=PROMPTS, loa=np.full((2, 8, pipe.language_model_config.n_embd), np.nan)),
         r"loa holds \d+ non-finite"),
        (dict(prompt=PROMPTS, loa=np.zeros((2, 8, pipe.language_model_config.n_embd)), max_new_tokens=4),
         r"max_new_tokens=4 but loa has 8 tokens"),
        (dict(prompt=[1, 2]), "prompt must be"),
        # eta: DDIM's noise scale, a finite number >= 0
        (dict(prompt=PROMPTS, eta=float("nan")), "eta=nan must be a finite number >= 0"),
        (dict(prompt=PROMPTS, eta=float("inf")), "eta=inf must be a finite number"),
        (dict(prompt=PROMPTS, eta=-0.5), "eta=-0.5 must be a finite number >= 0"),
        (dict(prompt=PROMPTS, scheduler="dpmsolver++", eta=float("nan")), "eta=nan must be a finite number"),
        (dict(prompt=PROMPTS, eta=True), "eta=True"),
        # seeds: integers only
        (dict(prompt=PROMPTS, seed=1.5), r"seed=1.5 must be an integer"),
        (dict(prompt=PROMPTS, seed=float("nan")), r"seed=nan must be an integer"),
        (dict(prompt=PROMPTS, seed=True), r"seed=True must be an integer"),
        (dict(prompt=PROMPTS, seed=[1, 2.5]), r"seed=\[1, 2.5\] must be an integer"),
        (dict(prompt=PROMPTS, seed=[False, 1]), r"must be an integer"),
        (dict(prompt=PROMPTS, seed="7"), r"seed='7' must be an integer"),
        # user-given initial noise must be finite (float64 beyond float32's range included)
        (dict(prompt=PROMPTS, latents=_latents_with(0, np.nan)),
         r"latents hold 1 non-finite value\(s\) \(NaN 1, inf 0"),
        (dict(prompt=PROMPTS, latents=_latents_with(5, -np.inf)), r"latents hold 1 non-finite .*inf 1"),
        (dict(prompt=PROMPTS, latents=_latents_with(7, 1e300)), r"latents hold 1 non-finite .*inf 1"),
        # the T5 stream of PROMPTS is 16 tokens: GPT-2's 96 positions leave room for 96 - 21 + 1 = 76 new tokens
        (dict(prompt=PROMPTS, max_new_tokens=77), r"max_new_tokens=77 is too many .*n_positions=96 .* 21 "
                                                  r"embeddings long .*T5 16.* = 76 new tokens fit"),
    ]
    for kwargs, message in cases:
        kwargs.setdefault("audio_length_in_s", DURATION)
        with pytest.raises(ValueError, match=message):
            pipe(**kwargs)


def test_float16_on_cpu_is_refused_by_name(checkpoint):
    """XLA:CPU has no float16 x float16 -> float32 matrix product (the attention's logits): the pipeline says so when
    it is built, not with a compiler error at the first call."""
    from audioldm2_jax import AudioLDM2Pipeline

    folder, _ = checkpoint
    with pytest.raises(ValueError, match="float16 is not supported on CPU.*float32 or bfloat16"):
        AudioLDM2Pipeline.from_pretrained(folder, dtype=jax.numpy.float16)


def _latents_with(index: int, value: float) -> np.ndarray:
    """Initial latents for PROMPTS at DURATION, float64, with one entry (flat ``index``) set to ``value``."""
    latents = reference_latents(2, DURATION, seed=5).astype(np.float64)
    latents.reshape(-1)[index] = value
    return latents


def test_max_new_tokens_bound_matches_the_reference(checkpoint, pipe):
    """The longest LOA is the reference's: diffusers' GPT-2 runs with n_positions - prompt + 1 new tokens and fails
    (torch's embedding lookup out of range) with one more; the prompt is CLAP's token + the T5 tokens (16 for
    PROMPTS, 8 for "a dog barks") + 4 SOS / EOS. Ours refuses one more before compiling, and at the bound gives the
    reference's LOA."""
    _, reference = checkpoint
    positions = reference.language_model.config.n_positions
    for prompts, t5_length in ((PROMPTS, 16), (["a dog barks"], 8)):
        bound = positions - (t5_length + 5) + 1
        with pytest.raises(IndexError):
            with torch.no_grad():
                reference.encode_prompt(prompts, "cpu", 1, False, max_new_tokens=bound + 1)
        with pytest.raises(ValueError, match=f"max_new_tokens={bound + 1} is too many.* = {bound} new tokens fit"):
            pipe._validate(prompts, None, None, DURATION, STEPS, 1.0, 1, "ddim", 0.0, 0, None, bound + 1)
        request = pipe._validate(prompts, None, None, DURATION, STEPS, 1.0, 1, "ddim", 0.0, 0, None, bound)
        assert request.max_new_tokens == bound
    with torch.no_grad():
        expected = reference.encode_prompt(PROMPTS, "cpu", 1, False, max_new_tokens=76)[2].numpy()
    request = pipe._validate(PROMPTS, None, None, DURATION, STEPS, 1.0, 1, "ddim", 0.0, 0, None, 76)
    _, (loa, _, _) = pipe._encode(request, Timings())  # guidance off: the prompts' rows only
    loa = np.asarray(loa)
    assert loa.shape == expected.shape == (2, 76, 32)
    err = assert_close(loa, expected, rel=1e-4, what="LOA at the longest max_new_tokens")
    print(f"LOA at max_new_tokens=76: max abs error {np.abs(loa - expected).max():.2e} (relative {err:.1e})")


def test_non_finite_output_is_an_error(pipe):
    """A diverged sample is raised, naming the prompt: here prompt 1's second waveform starts from latents that
    overflow float32 inside the UNet (finite, so they pass the up-front check). The other prompt's waveforms are the
    ones a clean call gives; with a NaN vocoder every prompt fails, in the waveform only."""
    latents = reference_latents(4, DURATION, seed=2)
    kwargs = dict(negative_prompt=NEGATIVES, audio_length_in_s=DURATION, num_inference_steps=STEPS,
                  num_waveforms_per_prompt=2)
    clean = pipe(PROMPTS, latents=latents, **kwargs)
    assert np.isfinite(clean).all()
    diverging = latents.copy()
    diverging[3] = 3e38
    with pytest.raises(NonFiniteOutputError, match=r"for 1 of 2 prompt\(s\), 1 of 4 waveform\(s\): prompt 1 'rain "
                                                   r"falls.* \(row [23]; in the log-mel already") as info:
        pipe(PROMPTS, latents=diverging, **kwargs)
    err = info.value
    print(err)
    assert isinstance(err, FloatingPointError) and err.prompts == (1,) and err.rows in ((2,), (3,))
    assert err.waveforms.shape == (4, 5760) and err.log_mel.shape == (4, 36, 16)
    assert not np.isfinite(err.waveforms[err.rows[0]]).all() and np.isfinite(err.waveforms[:2]).all()
    np.testing.assert_array_equal(err.waveforms[:2], clean[:2])  # prompt 0: the clean call's (ranked) waveforms

    nan_vocoder = copy.copy(pipe)  # shares the compiled programs: the parameters are an argument
    nan_vocoder.params = dict(pipe.params, vocoder=jax.tree.map(lambda x: x * np.nan, pipe.params["vocoder"]))
    with pytest.raises(NonFiniteOutputError, match=r"2 of 2 prompt\(s\), 4 of 4 .*rows 0, 1; in the waveform only: "
                                                   r"the vocoder\).*rows 2, 3; in the waveform only") as info:
        nan_vocoder(PROMPTS, latents=latents, **kwargs)
    assert info.value.prompts == (0, 1) and info.value.rows == (0, 1, 2, 3)
    assert np.isfinite(info.value.log_mel).all()


def test_durations_round_as_the_reference(pipe):
    # 10.24 s is 1023.99.. frames in float64: int() gives 1023, rounded up to 1024 (as diffusers computes it).
    assert pipe.frames_for(10.24) == 1024
    assert pipe.frames_for(DURATION) == 36 and pipe.frames_for(0.37) == 40
    assert pipe.latent_shape(3, 0.37) == (3, 8, 10, 4)
    assert pipe.default_duration_s == pytest.approx(16 * 4 * 0.01)  # the UNet's sample_size latent frames
