"""Audio-to-audio (issue #19): style transfer, inpainting, super-resolution, continuation and chunked decoding.

References: diffusers' image-to-image ``get_timesteps`` and its schedulers (stepped on a toy denoiser), diffusers'
``AudioLDM2Pipeline`` run from the input's noised latent with the sliced schedule (SDEdit), the reference VAE /
vocoder (strength 0 reconstructs the input), librosa's mel spectrogram, and the whole (unchunked) decoders."""

import copy
import json
import math
import types

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest
import torch
from conftest import assert_close
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler, StableDiffusionImg2ImgPipeline
from pipeline_fixtures import checkpoint_and_pipeline_fixtures, reference_latents, scheduler

from audioldm2_jax import editing, sample
from audioldm2_jax.audio import mel as mel_lib
from audioldm2_jax.audio.io import write_wav
from audioldm2_jax.diffusion import make_sampler, sample_loop
from audioldm2_jax.pipeline import DecodeChunking, vocoder_reach_frames

checkpoint, pipe = checkpoint_and_pipeline_fixtures("text")

PROMPT = "a dog barks"
DURATION = 0.36  # 36 mel frames, 9 latent frames (odd: the UNet's forced upsampling size)
STEPS = 4
CLASSES = {"ddim": DDIMScheduler, "dpmsolver++": DPMSolverMultistepScheduler, "pndm": PNDMScheduler,
           "pndm-prk": PNDMScheduler}


def clip(seconds: float = DURATION, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A tone with noise: energy across the band, so the input's latent is not trivial."""
    t = np.arange(int(round(seconds * rate))) / rate
    noise = np.random.default_rng(seed).standard_normal(t.shape)
    return (np.sin(2 * np.pi * 440 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.2 * noise).astype(np.float32)


def published_config(name: str) -> dict:
    """The published scheduler config; "pndm": PLMS alone (``skip_prk_steps``), "pndm-prk": with the Runge-Kutta
    warm-up (the class default)."""
    config = dict(scheduler().config)
    if name == "pndm":
        config["skip_prk_steps"] = True
    return config


def diffusers_img2img(name: str, config: dict, steps: int, strength: float):
    """diffusers' scheduler after ``set_timesteps`` and its image-to-image pipelines' ``get_timesteps``."""
    sched = CLASSES[name].from_config(config)
    sched.set_timesteps(steps)
    timesteps, _ = StableDiffusionImg2ImgPipeline.get_timesteps(types.SimpleNamespace(scheduler=sched), steps,
                                                                strength, "cpu")
    return sched, timesteps


# ----------------------------------------------------------------------------------------------------------------
# Strength schedules, against diffusers (no networks)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ddim", "dpmsolver++", "pndm", "pndm-prk"])
def test_strength_schedule_and_steps_match_diffusers(name):
    """For each strength: the model runs at diffusers' ``get_timesteps`` slice, the input is noised as its
    scheduler's ``add_noise`` at the first of them, and stepping a toy denoiser from there gives diffusers' result
    (DPM-Solver++ restarts first order; PNDM restarts its step counter, with or without the warm-up)."""
    config, steps = published_config(name), 10
    x0 = np.random.default_rng(1).standard_normal((2, 6, 3, 4)).astype(np.float32)
    eps = np.random.default_rng(2).standard_normal(x0.shape).astype(np.float32)
    toy = lambda x, t, np_=jnp: 0.3 * x + 0.05 * np_.cos(t / 100.0)  # noqa: E731
    worst = 0.0
    for strength in (0.0, 0.1, 0.25, 0.5, 0.73, 0.99, 1.0):
        sampler, t_start = editing.strength_plan(make_sampler(name.removesuffix("-prk"), config, steps), config,
                                                 steps, strength)
        sched, expected = diffusers_img2img(name, config, steps, strength)
        assert t_start == editing.start_step(steps, strength) == steps - min(int(steps * strength), steps)
        if strength == 0.0:  # no step: the input is decoded as it is (diffusers' slice is empty for DDIM / DPM)
            assert sampler.num_steps == 0
            assert name.startswith("pndm") or len(expected) == 0
            continue
        np.testing.assert_array_equal(sampler.timesteps, expected.numpy(), err_msg=f"{name} strength {strength}")
        signal, noise = editing.noise_levels(sampler, config)
        start = signal[0] * x0 + noise[0] * eps
        ref = sched.add_noise(torch.from_numpy(x0), torch.from_numpy(eps), expected[:1])
        assert_close(start, ref.numpy(), rel=1e-6, what=f"{name} add_noise at strength {strength}")
        assert (signal[-1], noise[-1]) == (1.0, 0.0)
        for t in expected:
            ref = sched.step(toy(ref, float(t), np_=math), t, ref).prev_sample
        ours = jax.jit(lambda x: sample_loop(sampler, lambda x, t: toy(x, t.astype(jnp.float32)), x))(start)
        worst = max(worst, assert_close(ours, ref.numpy(), rel=1e-5, what=f"{name} steps at strength {strength}"))
    print(f"{name}: worst relative error over the strengths {worst:.1e}")


@pytest.mark.parametrize("name", ["ddim", "dpmsolver++", "pndm"])
def test_masked_loop_reimposes_the_known_region_at_every_step(name):
    """Before every model evaluation the known cells are the input latent noised to that step's level (the row's
    initial noise), exactly; after the last step they are the input latent itself; the other cells move."""
    config = published_config(name)
    sampler = make_sampler(name, config, 5)
    signal, noise = editing.noise_levels(sampler, config)
    plan = editing.EditPlan("masked", signal, noise, key=("masked", 0))
    rng = np.random.default_rng(3)
    known, eps = (jnp.asarray(rng.standard_normal((2, 6, 3, 4)), jnp.float32) for _ in range(2))
    keep = jnp.asarray(rng.random((2, 6, 3, 1)) < 0.5)
    seen = []

    def denoise(x, t):
        seen.append((np.asarray(x), int(t)))
        return 0.3 * x + 0.05 * jnp.cos(t / 100.0)

    with jax.disable_jit():  # a Python loop, so every model input can be looked at
        x, loop = editing.edit_start(sampler, plan, eps, known, keep)
        final = np.asarray(sample_loop(loop, denoise, x))
    assert len(seen) == sampler.num_steps
    k = np.broadcast_to(np.asarray(keep), known.shape)
    for i, (x_in, t) in enumerate(seen):
        assert t == sampler.timesteps[i]
        expected = np.asarray(jnp.float32(signal[i]) * known + jnp.float32(noise[i]) * eps)
        np.testing.assert_array_equal(x_in[k], expected[k], err_msg=f"{name} step {i}")
    np.testing.assert_array_equal(final[k], np.asarray(known)[k])
    assert np.abs(final[~k] - np.asarray(eps)[~k]).min() > 0  # generated, not copied


# ----------------------------------------------------------------------------------------------------------------
# The pipeline's methods against the reference
# ----------------------------------------------------------------------------------------------------------------


def reference_encode(reference, log_mel: np.ndarray) -> torch.Tensor:
    """diffusers' VAE posterior mode times the scaling factor, reference layout ``[I, C, T/f, W]``."""
    with torch.no_grad():
        posterior = reference.vae.encode(torch.from_numpy(log_mel)[:, None]).latent_dist
    return posterior.mode() * reference.vae.config.scaling_factor


def test_strength_zero_is_the_vae_reconstruction(checkpoint, pipe):
    """Strength 0 runs no step: the output is the reference VAE's decoding of the reference encoder's latent of the
    input's log-mel, through the reference vocoder."""
    _, reference = checkpoint
    out = pipe.transfer(clip(), PROMPT, strength=0.0, num_inference_steps=STEPS, guidance_scale=2.5)
    assert out.start_step == STEPS and out.regenerate is None
    np.testing.assert_array_equal(out.latents, out.input_latents)
    z0 = reference_encode(reference, out.input_log_mel)
    assert_close(out.input_latents, z0.numpy(), rel=1e-4, what="input latent (VAE encoder)")
    with torch.no_grad():
        mel = reference.vae.decode(z0 / reference.vae.config.scaling_factor).sample[:, 0]
        expected = reference.vocoder(mel).numpy()[:, :out.waveforms.shape[1]]
    err = assert_close(out.waveforms, expected, rel=1e-4, what="strength-0 waveform")
    print(f"strength 0: relative error {err:.1e} against the reference reconstruction")
    assert expected.std() > 0.05


def test_transfer_matches_diffusers_sdedit(checkpoint, pipe):
    """DPM-Solver++ at strength 0.5: diffusers' AudioLDM2Pipeline started from its scheduler's ``add_noise`` of
    the input latent at the first ``get_timesteps`` timestep, looping over that slice (``set_begin_index``)."""
    _, reference = checkpoint
    strength, eps = 0.5, reference_latents(1, DURATION, seed=7)
    out = pipe.transfer(clip(), PROMPT, strength=strength, num_inference_steps=STEPS, guidance_scale=2.5,
                        scheduler="dpmsolver++", latents=eps)
    assert out.start_step == 2
    z0 = reference_encode(reference, out.input_log_mel)
    sched, timesteps = diffusers_img2img("dpmsolver++", reference.scheduler.config, STEPS, strength)
    noised = sched.add_noise(z0, torch.from_numpy(eps), timesteps[:1])

    # diffusers' image-to-image pipelines loop over a local slice while the scheduler keeps its whole plan (its
    # final-step rules count it); AudioLDM2Pipeline loops over scheduler.timesteps, so the slice is shown to the
    # loop and the whole plan to every step.
    loop = DPMSolverMultistepScheduler.from_config(reference.scheduler.config)
    set_timesteps, step, plan = loop.set_timesteps, loop.step, {}

    def sliced(num_inference_steps, device=None, **kwargs):
        set_timesteps(num_inference_steps, device=device, **kwargs)
        plan["whole"] = loop.timesteps
        loop.timesteps, _ = StableDiffusionImg2ImgPipeline.get_timesteps(
            types.SimpleNamespace(scheduler=loop), num_inference_steps, strength, device)

    def whole_plan_step(*args, **kwargs):
        shown, loop.timesteps = loop.timesteps, plan["whole"]
        try:
            return step(*args, **kwargs)
        finally:
            loop.timesteps = shown

    loop.set_timesteps, loop.step = sliced, whole_plan_step
    reference = copy.copy(reference)
    reference.scheduler = loop
    with torch.no_grad():
        expected = reference(PROMPT, audio_length_in_s=DURATION, num_inference_steps=STEPS, guidance_scale=2.5,
                             latents=noised, output_type="np").audios
    err = assert_close(out.waveforms, expected, rel=1e-4, what="transfer (dpmsolver++, strength 0.5)")
    print(f"transfer: relative error {err:.1e}; timings {out.timings}")
    assert np.abs(out.latents - out.input_latents).max() > 1e-2


def test_inpainting_everything_is_plain_generation(checkpoint, pipe):
    """A mask over every mel cell leaves nothing to re-impose: the reference's text-to-audio from the same noise."""
    _, reference = checkpoint
    eps = reference_latents(1, DURATION, seed=4)
    out = pipe.inpaint(clip(), PROMPT, mask=np.ones((36, 16), bool), num_inference_steps=STEPS, guidance_scale=2.5,
                       latents=eps)
    assert out.regenerate.all()
    reference.scheduler = DDIMScheduler.from_config(reference.scheduler.config)
    with torch.no_grad():
        expected = reference(PROMPT, audio_length_in_s=DURATION, num_inference_steps=STEPS, guidance_scale=2.5,
                             latents=torch.from_numpy(eps), output_type="np").audios
    err = assert_close(out.waveforms, expected, rel=1e-4, what="inpainting with a full mask")
    print(f"full-mask inpainting: relative error {err:.1e} against the reference's generation")


def test_inpainting_keeps_the_known_latent(pipe):
    """A time span: the latent frames outside it come back as the input's latent exactly; with ``blend_s`` the
    waveform is the input's beyond the cross-fade. Same program as the full mask above (the mask is an argument)."""
    out = pipe.inpaint(clip(), PROMPT, mask=(0.1, 0.2), num_inference_steps=STEPS, guidance_scale=2.5, seed=3,
                       blend_s=0.02)
    regen = out.regenerate[0]  # [T/f, W]: frames 10..19 of 36 -> latent frames 2..4
    np.testing.assert_array_equal(regen.any(axis=1), np.isin(np.arange(9), [2, 3, 4]))
    keep = np.broadcast_to(~regen, out.latents.shape[2:])
    np.testing.assert_array_equal(out.latents[0][:, keep], out.input_latents[0][:, keep])
    assert np.abs(out.latents[0][:, ~keep] - out.input_latents[0][:, ~keep]).max() > 1e-2
    far = np.r_[0:1280 - 330, 3200 + 330:5760]  # 20 ms + margin from the regenerated samples 1280..3199
    np.testing.assert_array_equal(out.waveforms[0, far], out.input_waveform[0, far])


def test_continuation_reproduces_the_prefix_latent(checkpoint, pipe):
    """The prefix's whole latent frames are the reference encoder's latent of the prefix alone, and the output's
    first frames are exactly that latent; the rest is generated."""
    _, reference = checkpoint
    audio = clip(0.25)  # 25 mel frames: 6 whole latent frames (24 mel frames) are known
    out = pipe.continue_audio(audio, PROMPT, seconds=0.11, num_inference_steps=STEPS, guidance_scale=2.5)
    assert out.waveforms.shape == (1, 5760) and out.latents.shape == (1, 8, 9, 4)
    np.testing.assert_array_equal(out.regenerate[0].any(axis=1), np.arange(9) >= 6)
    np.testing.assert_array_equal(out.latents[:, :, :6], out.input_latents[:, :, :6])
    prefix = editing.log_mel(out.input_waveform[:, :24 * 160], 16)
    assert_close(out.input_latents[:, :, :6], reference_encode(reference, prefix).numpy(), rel=1e-4,
                 what="prefix latent")
    assert np.abs(out.latents[:, :, 6:]).max() > 0.1


# ----------------------------------------------------------------------------------------------------------------
# Chunked decoding
# ----------------------------------------------------------------------------------------------------------------


def test_chunked_vocoder_equals_whole_decoding(pipe):
    """The vocoder is local: with margins at least its reach (:func:`vocoder_reach_frames`), windows whose kept
    parts are written in place (the last overlapping its neighbour) are the whole decode (within 1e-5 of the
    waveform's scale)."""
    assert vocoder_reach_frames(pipe.vocoder_config) <= 24
    mel = np.random.default_rng(5).normal(-2.0, 1.0, (2, 300, 16)).astype(np.float32)
    vocoder = lambda m: pipe.vocoder.apply(pipe.params["vocoder"], m)  # noqa: E731
    whole = np.asarray(jax.jit(vocoder)(mel))[:, :300 * 160]
    plan = editing.chunk_plan(300, window=64, margin=24)
    assert plan.starts == (0, 64, 128, 192, 236) and plan.decode_starts == (0, 40, 104, 168, 188)
    wave = np.asarray(jax.jit(lambda m: editing.decode_in_chunks(vocoder, m, plan, 1, 160))(mel))
    err = assert_close(wave, whole, rel=1e-5, what="chunked vocoder")
    print(f"chunked vocoder: relative error {err:.1e}")


def test_chunked_pipeline_decoding_equals_whole(pipe):
    """Through the pipeline (``decode_chunking``): 1.6 s (40 latent frames) in 0.64 s windows (16 frames: 3
    windows, the last overlapping), on a strength-0 transfer (the program decodes the input's latent: no UNet to
    compile). The sampling program returns the latents, the VAE decoder is streamed with the whole clip's GroupNorm
    statistics and attention, the vocoder runs in windows with margins: log-mel and waveform equal the whole decode
    within 1e-5 of their scale (the windowed decoder this replaced differed by 8.6e-2 and 6.3e-2)."""
    chunked = copy.copy(pipe)
    chunked._compiled = dict(pipe._compiled)  # the text side's programs; the sampling program is new (its key)
    chunked.decode_chunking = DecodeChunking(window_s=0.64, margin_s=0.24, above_s=1.0)
    plan = chunked._chunk_plan(160)
    assert pipe._chunk_plan(160) is None and plan.starts == (0, 16, 24) and plan.decode_starts == (0, 10, 12)
    out = chunked.transfer(clip(1.6), PROMPT, strength=0.0, num_inference_steps=STEPS, guidance_scale=2.5)
    latents = out.input_latents.transpose(0, 2, 3, 1)
    mel, wave = jax.jit(pipe._decode_fn())(pipe.params, latents)
    mel_err = assert_close(out.log_mel, mel, rel=1e-5, what="chunked vs whole log-mel")
    wave_err = assert_close(out.waveforms, np.asarray(wave)[:, :25600], rel=1e-5, what="chunked vs whole waveform")
    print(f"chunked decoding of 1.6 s in {len(plan.starts)} windows vs whole: relative error log-mel {mel_err:.1e}, "
          f"waveform {wave_err:.1e}")
    chunked.decode_chunking = DecodeChunking(window_s=0.64, margin_s=0.01, above_s=1.0)
    with pytest.raises(ValueError, match="shorter than the vocoder's reach"):
        chunked._chunk_plan(160)


# ----------------------------------------------------------------------------------------------------------------
# Inputs, masks, errors, the command line
# ----------------------------------------------------------------------------------------------------------------


def test_input_front_end_and_bandwidth():
    """The input's log-mel is AudioLDM's front end (64 bins: the data pipeline's; 16 bins: librosa's magnitude mel
    of the reflect-padded signal, center=False); the bandwidth of a recording made at 8 kHz is found at ~4 kHz, and
    a full-band one at 8 kHz."""
    wave = clip(0.5)
    np.testing.assert_array_equal(editing.log_mel(wave, 64), mel_lib.log_mel_spectrogram(wave))
    padded = np.pad(wave.astype(np.float64), (mel_lib.PAD, mel_lib.PAD), mode="reflect")
    expected = librosa.feature.melspectrogram(y=padded, sr=16000, n_fft=1024, hop_length=160, win_length=1024,
                                              center=False, power=1.0, n_mels=16, fmin=0.0, fmax=8000.0).T
    np.testing.assert_allclose(editing.log_mel(wave, 16), np.log(np.maximum(expected, 1e-5)), atol=1e-5)

    noise = np.random.default_rng(0).standard_normal(8000).astype(np.float32)
    narrow = editing.load_input(noise, 16000, audio_sampling_rate=8000)
    assert narrow.wave.shape == (16000,) and narrow.source_rate == 8000
    assert np.abs(narrow.wave).max() == pytest.approx(editing.INPUT_PEAK) and abs(narrow.wave.mean()) < 1e-6
    assert 3600 <= editing.detect_bandwidth(narrow) <= 4000
    assert editing.detect_bandwidth(editing.load_input(noise, 16000)) >= 7900


def test_masks():
    """Seconds and hertz map to mel cells, then to every latent cell over a regenerated mel cell."""
    span = editing.mel_mask((0.105, 0.2), 36, 16, 0.36, 0.01, 8000)
    np.testing.assert_array_equal(span.any(axis=1), (np.arange(36) >= 10) & (np.arange(36) < 20))
    np.testing.assert_array_equal(editing.latent_mask(span, 4).any(axis=1), np.isin(np.arange(9), [2, 3, 4]))
    band = editing.mel_mask(editing.FrequencyBand(4000, 8000), 36, 16, 0.36, 0.01, 8000)
    centres = editing.mel_bin_frequencies(16)
    np.testing.assert_array_equal(band[0], centres >= 4000)
    assert band.all(axis=0).sum() == (centres >= 4000).sum() and band.any(axis=0).sum() < 16
    weights = editing.edge_blend_weights(np.r_[np.zeros(10, bool), np.ones(5, bool), np.zeros(10, bool)], 4)
    np.testing.assert_allclose(weights[5:20], [0, .2, .4, .6, .8, 1, 1, 1, 1, 1, .8, .6, .4, .2, 0], atol=1e-6)
    assert weights[:5].max() == weights[20:].max() == 0


def test_bad_inputs_are_clear_errors(pipe, tmp_path, monkeypatch):
    """Every bad input is named before anything is compiled."""
    def no_compile(*args, **kwargs):
        raise AssertionError("compilation started before the input was checked")

    monkeypatch.setattr(pipe, "_compile", no_compile)
    silent, broken = tmp_path / "silent.wav", tmp_path / "broken.wav"
    write_wav(silent, np.zeros(8000, np.float32))
    broken.write_bytes(b"RIFF0000WAVEfmt nothing")
    audio, kw = clip(), dict(num_inference_steps=STEPS)
    cases = [
        (lambda: pipe.inpaint(audio, PROMPT, mask=(0.2, 0.5), **kw), r"\[0.2, 0.5\) s is not inside the clip"),
        (lambda: pipe.inpaint(audio, PROMPT, mask=(-0.1, 0.2), **kw), "not inside the clip"),
        (lambda: pipe.inpaint(audio, PROMPT, mask=editing.FrequencyBand(1000, 9000), **kw), "Nyquist"),
        (lambda: pipe.inpaint(audio, PROMPT, mask=np.ones((35, 16), bool), **kw), r"\[36, 16\]"),
        (lambda: pipe.inpaint(audio, PROMPT, mask=np.zeros((36, 16), bool), **kw), "selects nothing"),
        (lambda: pipe.inpaint(audio, PROMPT, mask=editing.FrequencyBand(4000, 8000), blend_s=0.1, **kw),
         "whole time frames"),
        (lambda: pipe.transfer(audio, PROMPT, strength=1.5, **kw), r"strength=1.5 must lie in \[0, 1\]"),
        (lambda: pipe.transfer(audio, PROMPT, strength=-0.1, **kw), "strength"),
        (lambda: pipe.transfer(audio, PROMPT, strength=float("nan"), **kw), "strength=nan must be a finite"),
        (lambda: pipe.transfer(str(tmp_path / "missing.wav"), PROMPT, **kw), "missing.wav.*no such file"),
        (lambda: pipe.transfer(str(broken), PROMPT, **kw), "cannot decode audio file.*broken.wav"),
        (lambda: pipe.transfer(str(silent), PROMPT, **kw), "silent.wav: the recording is silent"),
        (lambda: pipe.transfer(np.full(8000, np.nan, np.float32), PROMPT, **kw), "not finite"),
        (lambda: pipe.transfer([audio, audio, audio], [PROMPT, PROMPT], **kw), "3 inputs for 2 prompts"),
        (lambda: pipe.super_resolve(audio, PROMPT, cutoff_hz=8000, **kw), "cutoff_hz=8000 must lie between 0 and "
                                                                          "the Nyquist frequency 8000"),
        (lambda: pipe.super_resolve(audio, PROMPT, cutoff_hz=12000, **kw), "Nyquist"),
        (lambda: pipe.super_resolve(editing.fit_length(np.random.default_rng(0).standard_normal(8000), 8000)
                                    .astype(np.float32), PROMPT, **kw), "already spans the whole band"),
        (lambda: pipe.continue_audio(audio[:50], PROMPT, seconds=1.0, **kw), "at least one latent frame"),
        (lambda: pipe.continue_audio(audio, PROMPT, seconds=0.0, **kw), "seconds=0 must be > 0"),
        (lambda: pipe.transfer(audio, PROMPT, audio_length_in_s=-1.0, **kw), "audio_length_in_s"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_sample_command_edits_a_recording(pipe, tmp_path, capsys):
    """``sample.py --input --mode``: the flags make the pipeline call (checked before anything loads) and the job
    writes the edit with a two-panel PNG; the program is the strength-0 test's (cached)."""
    source = tmp_path / "in.wav"
    write_wav(source, 0.5 * clip())
    args = sample.parse_args(["--checkpoint", "x", "--prompt", PROMPT, "--input", str(source), "--mode", "transfer",
                              "--strength", "0"])
    assert args.edit == sample.EditJob("transfer", str(source), {"strength": 0.0})
    for flags, message in ((["--mode", "transfer"], "need --input"), (["--input", str(source)], "needs --mode"),
                           (["--input", str(source), "--mode", "sr", "--strength", "0.5"], "does not take"),
                           (["--input", str(source), "--mode", "inpaint", "--start", "1"], "both --start and --end"),
                           (["--input", str(tmp_path / "no.wav"), "--mode", "sr"], "no such file")):
        with pytest.raises(SystemExit):
            sample.parse_args(["--checkpoint", "x", "--prompt", PROMPT] + flags)
        assert message in capsys.readouterr().err
    totals = sample.run_sampling_job(pipe, [sample.Clip(PROMPT, "edit")], tmp_path / "out", batch_size=1,
                                     edit=args.edit, progress=False, num_inference_steps=STEPS, guidance_scale=2.5)
    assert totals["clips"] == 1
    settings = json.loads((tmp_path / "out" / "edit.json").read_text())
    assert settings["mode"] == "transfer" and settings["strength"] == 0.0 and settings["input"] == str(source)
    assert (tmp_path / "out" / "edit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "out" / "edit.wav").is_file()
