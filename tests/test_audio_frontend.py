"""The 64-bin log-mel front end (NumPy and jnp) and audio I/O.

The reference for the mel is an independent computation written here: an explicit DFT matrix applied to
reflect-padded frames and librosa's own mel basis, in float64. The NumPy implementation (float64 inside) must
match it to 1e-5 on every input. The jnp implementation runs in float32: it matches to 1e-5 on every band within
52 dB of the frame's loudest one; bands much further down sit under float32's resolution (the PyTorch reference
is off by ~2e-3 on a pure synthetic tone there), and are checked in the linear domain at float32 precision
instead.
"""

import jax
import numpy as np
import pytest
import scipy.signal

from audioldm2_jax.audio import io as audio_io
from audioldm2_jax.audio import mel

SR = 16000


def independent_log_mel(wave: np.ndarray) -> np.ndarray:
    """AudioLDM's log-mel from first principles: explicit DFT matrix, librosa mel basis, float64."""
    import librosa

    n_fft, hop = 1024, 160
    pad = (n_fft - hop) // 2
    padded = np.pad(np.asarray(wave, np.float64), (pad, pad), mode="reflect")
    count = 1 + (len(padded) - n_fft) // hop
    frames = np.stack([padded[i * hop:i * hop + n_fft] for i in range(count)])
    window = 0.5 * (1 - np.cos(2 * np.pi * np.arange(n_fft) / n_fft))  # periodic Hann
    k = np.arange(n_fft // 2 + 1)[None, :]
    n = np.arange(n_fft)[:, None]
    dft = np.exp(-2j * np.pi * n * k / n_fft)  # [1024, 513]
    magnitude = np.abs((frames * window) @ dft)
    basis = librosa.filters.mel(sr=SR, n_fft=n_fft, n_mels=64, fmin=0, fmax=8000).astype(np.float64)
    return np.log(np.maximum(magnitude @ basis.T, 1e-5))


def speech_like(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """A glottal-pulse train with a gliding f0 through three formant resonators, plus a faint noise floor."""
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * np.arange(num_samples) / SR)
    phase = np.cumsum(f0 / SR)
    wave = (np.diff(np.floor(phase), prepend=0.0) > 0).astype(np.float64)
    for center, bandwidth in [(700, 130), (1220, 70), (2600, 160)]:
        radius = np.exp(-np.pi * bandwidth / SR)
        theta = 2 * np.pi * center / SR
        wave = scipy.signal.lfilter([1 - radius], [1, -2 * radius * np.cos(theta), radius ** 2], wave)
    wave = 0.5 * wave / np.abs(wave).max() + 1e-4 * rng.standard_normal(num_samples)
    return wave.astype(np.float32)


def assert_float32_close(ours_log: np.ndarray, ref_log: np.ndarray, what: str, factor: float = 1.0):
    """The float32 criterion: log error <= 1e-5, except for bands so far below the frame's loudest band (> ~75 dB)
    that float32 rounding of the loud ones dominates; there the linear energies agree to 2e-6 of that band.
    ``factor=2`` when both sides round in float32."""
    ours, ref = np.exp(np.asarray(ours_log, np.float64)), np.exp(np.asarray(ref_log, np.float64))
    bound = factor * (1e-5 * ref + 2e-6 * ref.max(axis=-1, keepdims=True))
    worst = np.max(np.abs(ours - ref) / bound)
    assert worst <= 1.0, f"{what}: error {worst:.2f} x the float32 bound"
    loud = ref_log >= ref_log.max(axis=-1, keepdims=True) - 6.0  # within 6 nats (52 dB) of the frame peak
    assert np.abs(ours_log - ref_log)[loud].max() <= factor * 1e-5, what


def test_num_frames():
    assert mel.num_frames(163840) == 1024  # 10.24 s
    assert mel.num_frames(40960) == 256
    assert mel.num_frames(16001) == 100
    with pytest.raises(ValueError, match="too short"):
        mel.num_frames(400)


def test_log_mel_matches_independent_reference():
    rng = np.random.default_rng(0)
    n = SR  # 1 s, 100 frames
    t = np.arange(n) / SR
    signals = {
        "speech": speech_like(n, rng),
        "noise": (0.3 * rng.standard_normal(n)).astype(np.float32),
        "tone_with_floor": (0.5 * np.sin(2 * np.pi * 440 * t) + 1e-3 * rng.standard_normal(n)).astype(np.float32),
        "pure_tone": (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
        "silence": np.zeros(n, np.float32),
    }
    batch = np.stack(list(signals.values()))
    ours_np = mel.log_mel_spectrogram(batch)
    ours_jnp = np.asarray(jax.jit(mel.log_mel_spectrogram_jnp)(batch))
    assert ours_np.shape == ours_jnp.shape == (len(signals), 100, 64)
    for row, (name, wave) in enumerate(signals.items()):
        ref = independent_log_mel(wave)
        np_err = np.abs(ours_np[row] - ref).max()
        assert np_err <= 1e-5, f"{name}: NumPy log-mel off by {np_err:.2e}"
        # one clip through the unbatched path gives the same numbers
        np.testing.assert_array_equal(mel.log_mel_spectrogram(wave), ours_np[row])
        assert_float32_close(ours_jnp[row], ref, name)
        assert_float32_close(ours_jnp[row], ours_np[row], name)
    assert np.all(ours_np[-1] == np.float32(np.log(1e-5)))  # silence hits the floor exactly


def test_log_mel_matches_torch_reference_code():
    """The reference preprocessing as AudioLDM 2 writes it in PyTorch (reflect pad, torch.stft, abs, mel, log)."""
    import torch
    import librosa

    rng = np.random.default_rng(1)
    wave = speech_like(2 * SR, rng)
    signal = torch.from_numpy(wave)[None, None]
    signal = torch.nn.functional.pad(signal, (432, 432), mode="reflect")[:, 0]
    spec = torch.stft(signal, 1024, hop_length=160, win_length=1024, window=torch.hann_window(1024),
                      center=False, normalized=False, onesided=True, return_complex=True).abs()
    basis = torch.from_numpy(librosa.filters.mel(sr=SR, n_fft=1024, n_mels=64, fmin=0, fmax=8000)).float()
    ref = torch.log(torch.clamp(basis @ spec, min=1e-5))[0].T.numpy()
    # torch computes in float32: the same float32 criterion applies
    assert_float32_close(mel.log_mel_spectrogram(wave), ref, "numpy log-mel vs torch")
    assert_float32_close(np.asarray(mel.log_mel_spectrogram_jnp(wave)), ref, "jnp log-mel vs torch", factor=2)


def test_mel_basis_is_cached_librosa_slaney():
    import librosa

    basis = mel.mel_basis()
    assert basis is mel.mel_basis()
    assert basis.shape == (64, 513) and basis.dtype == np.float32
    np.testing.assert_array_equal(basis, librosa.filters.mel(sr=SR, n_fft=1024, n_mels=64, fmin=0, fmax=8000,
                                                             htk=False, norm="slaney"))


def test_wav_roundtrip_clipping_and_formats(tmp_path):
    rng = np.random.default_rng(2)
    wave = (0.5 * rng.standard_normal(1600)).clip(-0.9, 0.9).astype(np.float32)
    loud = wave * 4.0  # clips
    audio_io.write_wav(tmp_path / "a.wav", wave)
    audio_io.write_wav(tmp_path / "loud.wav", loud, sr=22050)
    back, sr = audio_io.read_audio(tmp_path / "a.wav")
    assert sr == SR and back.shape == wave.shape and back.dtype == np.float32
    assert np.abs(back - wave).max() <= 0.5 / 32768
    back, sr = audio_io.read_audio(tmp_path / "loud.wav")
    assert sr == 22050 and np.abs(back).max() <= 1.0
    assert np.allclose(back[np.abs(loud) > 1.2], np.sign(loud[np.abs(loud) > 1.2]), atol=1e-4)

    import soundfile

    stereo = np.stack([wave, -wave], axis=1)
    soundfile.write(tmp_path / "s.flac", stereo, 44100, subtype="PCM_16")
    soundfile.write(tmp_path / "m.ogg", wave, SR, format="OGG", subtype="VORBIS")
    back, sr = audio_io.read_audio(tmp_path / "s.flac")
    assert sr == 44100 and back.shape == (1600, 2)
    back, sr = audio_io.read_audio(tmp_path / "m.ogg")
    assert sr == SR and back.ndim == 1 and abs(len(back) - 1600) < 100


def test_write_wav_refuses_non_finite_samples(tmp_path):
    """A NaN or infinite sample (a diverged model) is an error, not silence or full scale: nothing is written."""
    wave = np.linspace(-0.5, 0.5, 800, dtype=np.float32)
    cases = [("nan.wav", 3, np.nan, "NaN 1, inf 0; the first at sample 3"),
             ("inf.wav", 10, -np.inf, "NaN 0, inf 1; the first at sample 10")]
    for name, index, value, detail in cases:
        bad = wave.copy()
        bad[index] = value
        with pytest.raises(ValueError, match=f"{name}.*1 of 800 samples are not finite") as info:
            audio_io.write_wav(tmp_path / name, bad)
        assert detail in str(info.value)
        assert not (tmp_path / name).exists()
    stereo = np.stack([wave, wave], axis=1)
    stereo[5, 1] = np.nan
    with pytest.raises(ValueError, match="the first at sample 5"):
        audio_io.write_wav(tmp_path / "stereo.wav", stereo)
    # float64 beyond float32's range becomes inf on the way to float32: refused too
    with pytest.raises(ValueError, match="inf 1"):
        with np.errstate(over="ignore"):
            audio_io.write_wav(tmp_path / "big.wav", np.array([0.0, 1e300, 0.0]))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_read_audio_errors_name_the_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x00\x00not really a wave file" * 4)
    for name, reason in [("missing.wav", "no such file"), ("empty.wav", "empty file"), ("junk.wav", "soundfile")]:
        with pytest.raises(audio_io.AudioDecodeError, match=reason) as info:
            audio_io.read_audio(tmp_path / name)
        assert name in str(info.value)


def test_resample_tone_and_lengths():
    for sr_in in (8000, 22050, 44100, 48000):
        t = np.arange(sr_in) / sr_in
        tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
        out = audio_io.resample(tone, sr_in, SR)
        assert out.shape == (audio_io.resampled_length(sr_in, sr_in, SR),) == (SR,)
        expected = np.sin(2 * np.pi * 1000 * np.arange(SR) / SR)
        middle = slice(400, SR - 400)  # away from the filter's edge transients
        assert np.abs(out[middle] - expected[middle]).max() < 2e-3, sr_in
    stereo = np.random.default_rng(3).standard_normal((4410, 2)).astype(np.float32)
    assert audio_io.resample(stereo, 44100, SR).shape == (1600, 2)
    assert audio_io.resample(stereo, SR, SR) is not None
