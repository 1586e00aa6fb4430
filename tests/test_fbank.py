"""Kaldi fbank (AudioMAE's input) against kaldi-native-fbank, NumPy vs jnp, and the AudioMAE wrapping.

kaldi-native-fbank follows Kaldi, which refuses 128 bins at a 512-point FFT (filter 3 covers no FFT bin: "You
may have set num_mel_bins too large"); torchaudio, which AudioMAE calls, keeps that filter as all zeros. So the
whole pipeline (framing, DC removal, pre-emphasis, window, power spectrum, mel scale, log floor) is compared with
kaldi-native-fbank at 126 and 80 bins, and the 128-bin filterbank is compared with a from-the-definition
construction written here.
"""

import jax
import numpy as np
import pytest
import scipy.signal

from audioldm2_jax.audio import fbank

SR = 16000


def knf_fbank(wave: np.ndarray, num_bins: int) -> np.ndarray:
    import kaldi_native_fbank as knf
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = SR
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = "hanning"
    opts.frame_opts.snip_edges = True
    opts.frame_opts.frame_length_ms = 25
    opts.frame_opts.frame_shift_ms = 10
    opts.frame_opts.preemph_coeff = 0.97
    opts.frame_opts.remove_dc_offset = True
    opts.mel_opts.num_bins = num_bins
    opts.mel_opts.low_freq = 20
    opts.mel_opts.high_freq = 0
    opts.use_energy = False
    opts.htk_compat = True
    opts.use_power = True
    opts.use_log_fbank = True
    computer = knf.OnlineFbank(opts)
    computer.accept_waveform(SR, wave.astype(np.float32).tolist())
    computer.input_finished()
    return np.stack([computer.get_frame(i) for i in range(computer.num_frames_ready)])


def assert_log_energies_close(ours_log, ref_log, what: str, tol: float = 1e-3):
    """``tol`` on log energies; for bands so far below the frame's loudest (> 10 nats, 43 dB) that a float32 FFT's
    rounding of the loud bands dominates them, linear energies within 1e-4 of the loudest band."""
    ours_log, ref_log = np.asarray(ours_log, np.float64), np.asarray(ref_log, np.float64)
    assert ours_log.shape == ref_log.shape, what
    loud = ref_log >= ref_log.max(axis=-1, keepdims=True) - 10.0
    err = np.abs(ours_log - ref_log)
    assert err[loud].max() <= tol, f"{what}: max error {err[loud].max():.2e} on loud bands"
    ours, ref = np.exp(ours_log), np.exp(ref_log)
    quiet_err = np.abs(ours - ref) / ref.max(axis=-1, keepdims=True)
    assert quiet_err.max() <= 1e-4, f"{what}: linear error {quiet_err.max():.2e} of the frame peak"
    return err.max()


def test_signals(num_samples: int = 2 * SR) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    f0 = 110 + 40 * np.sin(2 * np.pi * 0.6 * np.arange(num_samples) / SR)
    pulses = (np.diff(np.floor(np.cumsum(f0 / SR)), prepend=0.0) > 0).astype(np.float64)
    speech = pulses
    for center, bandwidth in [(650, 120), (1100, 90), (2500, 170), (3400, 250)]:
        radius = np.exp(-np.pi * bandwidth / SR)
        theta = 2 * np.pi * center / SR
        speech = scipy.signal.lfilter([1 - radius], [1, -2 * radius * np.cos(theta), radius ** 2], speech)
    t = np.arange(num_samples) / SR
    return {
        "speech": (0.5 * speech / np.abs(speech).max()).astype(np.float32),
        "tonal": (0.3 * np.sin(2 * np.pi * 261.6 * t) + 0.2 * np.sin(2 * np.pi * 329.6 * t)
                  + 0.1 * np.sign(np.sin(2 * np.pi * 392.0 * t))).astype(np.float32),
        "noise": (0.3 * rng.standard_normal(num_samples)).astype(np.float32),
    }


test_signals.__test__ = False  # a helper, not a test


@pytest.mark.parametrize("num_bins", [126, 80])
def test_kaldi_fbank_matches_kaldi_native_fbank(num_bins):
    for name, wave in test_signals().items():
        ref = knf_fbank(wave, num_bins)
        ours = fbank.kaldi_fbank(wave, num_mel_bins=num_bins)
        assert ours.shape == ref.shape == (fbank.num_frames(len(wave)), num_bins)
        assert_log_energies_close(ours, ref, f"{name} numpy vs knf")


def test_jnp_matches_numpy_and_knf_batched():
    signals = test_signals()
    batch = np.stack(list(signals.values()))  # [3, N]
    ours_jnp = np.asarray(jax.jit(lambda w: fbank.kaldi_fbank_jnp(w, num_mel_bins=126))(batch))
    for row, (name, wave) in enumerate(signals.items()):
        assert_log_energies_close(ours_jnp[row], fbank.kaldi_fbank(wave, num_mel_bins=126), f"{name} jnp vs numpy")
        assert_log_energies_close(ours_jnp[row], knf_fbank(wave, 126), f"{name} jnp vs knf", tol=2e-3)


def test_128_bin_filterbank_from_the_definition():
    """Kaldi's filters, built bin by bin as its definition reads: triangles in mel between 20 Hz and Nyquist."""
    num_bins, fft_size = 128, 512
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731
    low, high = mel(20.0), mel(SR / 2)
    step = (high - low) / (num_bins + 1)
    expected = np.zeros((num_bins, fft_size // 2 + 1))
    for b in range(num_bins):
        left, center, right = low + b * step, low + (b + 1) * step, low + (b + 2) * step
        for i in range(fft_size // 2):
            m = mel(i * SR / fft_size)
            if left < m < right:
                expected[b, i] = (m - left) / (center - left) if m <= center else (right - m) / (right - center)
    np.testing.assert_allclose(fbank.mel_banks(128), expected, atol=1e-12)
    # The filter Kaldi refuses: it covers no FFT bin, so torchaudio's feature column 3 is log(FLT_EPSILON).
    assert np.flatnonzero(expected.sum(axis=1) == 0).tolist() == [3]
    features = fbank.kaldi_fbank(test_signals()["noise"])
    assert features.shape[1] == 128
    assert np.all(features[:, 3] == np.float32(np.log(np.finfo(np.float32).eps)))


def test_audiomae_input_pads_crops_normalises():
    wave = test_signals(3 * SR)["speech"]  # 298 frames -> padded to 1024
    raw = fbank.kaldi_fbank(wave)
    x = fbank.audiomae_input(wave)
    assert x.shape == (1024, 128) and x.dtype == np.float32
    np.testing.assert_allclose(x[:298], (raw + 4.2677393) / (4.5689974 * 2), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(x[298:], 4.2677393 / (4.5689974 * 2), rtol=1e-6)  # zero frames, normalised
    long_wave = np.tile(wave, 4)  # 12 s -> cropped
    cropped = fbank.audiomae_input(long_wave)
    np.testing.assert_allclose(cropped, fbank.normalize(fbank.kaldi_fbank(long_wave)[:1024]), atol=1e-6)
    ten_s = np.tile(wave, 4)[:163840]
    batch = np.stack([ten_s, -ten_s])
    ours_jnp = np.asarray(jax.jit(fbank.audiomae_input_jnp)(batch))
    assert ours_jnp.shape == (2, 1024, 128)
    scale = 4.5689974 * 2  # compare as raw log energies
    assert_log_energies_close(ours_jnp[0] * scale, fbank.audiomae_input(ten_s) * scale, "audiomae_input_jnp")
    np.testing.assert_allclose(ours_jnp[0], ours_jnp[1], atol=1e-6)  # sign flip: same power spectrum


def test_bad_inputs():
    with pytest.raises(ValueError, match="16000 Hz"):
        fbank.kaldi_fbank(np.zeros(16000, np.float32), sample_rate=22050)
    with pytest.raises(ValueError, match="16000 Hz"):
        fbank.audiomae_input_jnp(np.zeros((1, 16000), np.float32), sample_rate=44100)
    with pytest.raises(ValueError, match="shorter than one 25 ms"):
        fbank.audiomae_input(np.zeros(399, np.float32))
    assert fbank.kaldi_fbank(np.zeros(400, np.float32)).shape == (1, 128)
    for constant in (np.zeros(8000, np.float32), np.full(8000, 0.3, np.float32)):
        assert np.all(np.isfinite(fbank.audiomae_input(constant)))
        assert np.all(np.isfinite(np.asarray(fbank.audiomae_input_jnp(constant))))
        # DC removal leaves nothing: every band sits at the floor
        assert np.all(fbank.kaldi_fbank(constant) == np.float32(np.log(np.finfo(np.float32).eps)))
