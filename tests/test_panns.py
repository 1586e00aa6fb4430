"""PANNs CNN14 (16 kHz) parity with ``panns_inference.models.Cnn14`` (its torchlibrosa front end included): the
published architecture at full size with seeded random weights and BatchNorm statistics taken from real activations
then perturbed, saved as the published files are (``torch.save({"model": state_dict})``) and read back through our
converter without torch. Front end (NumPy and jitted), 2048-d embedding, 527 logits and sigmoid outputs on the same
16 kHz audio; negative controls; converter round trip and errors."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close
from reference_init import without_package_init

from audioldm2_jax.audio import panns_features
from audioldm2_jax.audio.panns_features import PannsFrontEnd
from audioldm2_jax.convert import panns as panns_convert
from audioldm2_jax.convert.weights import CheckpointError
from audioldm2_jax.models.panns import Cnn14, PannsConfig, panns_outputs

import torch

SR = 16000
REFERENCE_ARGS = dict(sample_rate=SR, window_size=512, hop_size=160, mel_bins=64, fmin=50, fmax=8000, classes_num=527)


def _reference_class():
    with without_package_init("panns_inference"):
        return importlib.import_module("panns_inference.models").Cnn14


def _audio() -> np.ndarray:
    """Two 2 s clips at 16 kHz ``[2, 32000]`` float32: a chirp and harmonics in noise; a quieter noisy tone whose last
    0.5 s are exact zeros (as ``audioldm_eval`` pads short clips)."""
    rng = np.random.default_rng(0)
    t = np.arange(2 * SR) / SR
    first = 0.3 * np.sin(2 * np.pi * (200 * t + 900 * t ** 2)) + 0.1 * np.sin(2 * np.pi * 1234.5 * t)
    first += 0.05 * rng.standard_normal(t.size)
    second = 0.05 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(t.size)
    second[int(1.5 * SR):] = 0.0
    return np.stack([first, second]).astype(np.float32)


def _calibrate_and_perturb(model, audio: np.ndarray, seed: int) -> None:
    """BatchNorm statistics of the activations of ``audio`` (each BatchNorm in training mode with momentum 1, the
    rest of the model in eval mode: no dropout, no SpecAugment), so every layer sees O(1) inputs; then seeded noise on
    every parameter and statistic the converter maps (running means shifted by 0.3 std, variances scaled by
    0.6-1.6, BatchNorm scales 0.5-1.5 and shifts N(0, 0.3^2), linear biases N(0, 0.1^2)), so that a mis-mapped or
    ignored tensor shows; ``fc1``'s weights scaled by 0.1 so that the logits are O(1) (std ~2) rather than
    saturating the sigmoid outputs. The front end's matrices are left as torchlibrosa built them."""
    model.eval()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in norms:
        bn.train()
        bn.momentum = 1.0
    with torch.no_grad():
        model(torch.from_numpy(audio))
    model.eval()
    g = torch.Generator().manual_seed(seed)
    uniform = lambda t, lo, hi: lo + (hi - lo) * torch.rand(t.shape, generator=g)
    with torch.no_grad():
        for bn in norms:
            std = bn.running_var.sqrt()
            bn.running_mean.add_(0.3 * std * torch.randn(std.shape, generator=g))
            bn.running_var.mul_(uniform(bn.running_var, 0.6, 1.6))
            bn.weight.copy_(uniform(bn.weight, 0.5, 1.5))
            bn.bias.copy_(0.3 * torch.randn(bn.bias.shape, generator=g))
        for fc in (model.fc1, model.fc_audioset):
            fc.bias.copy_(0.1 * torch.randn(fc.bias.shape, generator=g))
        model.fc1.weight.mul_(0.1)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """``(torch model in eval mode, our params read from its saved checkpoint, the test audio, the reference's
    outputs on it)``."""
    torch.manual_seed(0)
    model = _reference_class()(**REFERENCE_ARGS)
    audio = _audio()
    _calibrate_and_perturb(model, audio, seed=1)
    path = tmp_path_factory.mktemp("panns") / "Cnn14_16k_random.pth"
    torch.save({"iteration": 0, "model": model.state_dict(), "sampler": None}, path)
    return model, panns_convert.load_panns(path), audio, _reference_outputs(model, audio)


def _reference_outputs(model, audio):
    with torch.no_grad():
        x = torch.from_numpy(audio)
        mel = model.logmel_extractor(model.spectrogram_extractor(x))[:, 0]  # [B, T, 64]
        out = model(x)
        logits = model.fc_audioset(out["embedding"])  # eval mode: the embedding is relu(fc1), no dropout
    return {"log_mel": mel.numpy(), "embedding": out["embedding"].numpy(), "logits": logits.numpy(),
            "clipwise_output": out["clipwise_output"].numpy()}


def _ours(params, audio):
    return jax.tree.map(np.asarray, panns_outputs(params, jnp.asarray(audio)))


def test_front_end_matches_torchlibrosa(reference):
    model, _, audio, ref = reference
    ref = ref["log_mel"]
    assert ref.shape == (2, 1 + audio.shape[1] // 160, 64) == (2, 201, 64)
    host = panns_features.log_mel(audio.astype(np.float64))
    device = np.asarray(jax.jit(panns_features.log_mel)(jnp.asarray(audio)))
    # Max abs error in dB against the 100 dB range: measured 3.4e-5 dB (host, float64) and 3.8e-5 dB (jitted,
    # float32), the reference's float32 DFT-by-convolution rounding; the bound, 1e-5 of scale (1e-3 dB), is tighter
    # than the project's 1e-4 because features in dB hide relative errors.
    assert_close(host, ref, 1e-5, what="log-mel (NumPy)")
    assert_close(device, ref, 1e-5, what="log-mel (jax)")
    assert host.dtype == np.float32 and device.dtype == np.float32
    # The zero tail of the second clip sits at the floor, 10 log10(amin) = -100 dB, in both.
    np.testing.assert_array_equal(host[1, -20:], -100.0)
    np.testing.assert_array_equal(ref[1, -20:], -100.0)
    # A length that is not a multiple of the hop: 1 + 20011 // 160 = 126 frames, the last one partly padding.
    clip = audio[:, :20011]
    with torch.no_grad():
        odd = model.logmel_extractor(model.spectrogram_extractor(torch.from_numpy(clip)))[:, 0].numpy()
    assert odd.shape == (2, 126, 64)
    assert_close(np.asarray(jax.jit(panns_features.log_mel)(jnp.asarray(clip))), odd, 1e-5, what="log-mel, odd length")


def test_outputs_match_reference(reference):
    _, params, audio, ref = reference
    ours = _ours(params, audio)
    assert ours["embedding"].shape == (2, 2048) and ours["logits"].shape == (2, 527)
    # Not a near-constant output: the embeddings differ across clips and most of fc1's units are active.
    assert np.abs(ref["embedding"][0] - ref["embedding"][1]).max() > 0.1 * np.abs(ref["embedding"]).max()
    assert (ref["embedding"] > 0).mean() > 0.2
    # Measured max abs error / scale: embedding 8.8e-7 (scale 9.2), logits 8.8e-7 (8.6), clipwise 1.1e-6 (1.0).
    for key in ("embedding", "logits", "clipwise_output"):
        assert_close(ours[key], ref[key], 1e-4, what=key)


def test_broken_conversions_are_caught(reference):
    """Negative controls: plausible conversion bugs move the outputs far beyond the parity tolerance."""
    _, params, audio, ref = reference

    def broken(edit):
        tree = jax.tree.map(np.array, params)
        edit(tree)
        return _ours(tree, audio)

    def swap_time_and_frequency(tree):  # conv kernels read as (kw, kh) instead of (kh, kw)
        for i in range(1, 7):
            for conv in ("conv1", "conv2"):
                kernel = tree[f"conv_block{i}"][conv]["kernel"]
                tree[f"conv_block{i}"][conv]["kernel"] = np.swapaxes(kernel, 0, 1)

    def drop_running_statistics(tree):  # bn0 left at its initial statistics
        tree["bn0"]["running_mean"][:] = 0.0
        tree["bn0"]["running_var"][:] = 1.0

    for edit in (swap_time_and_frequency, drop_running_statistics):
        with pytest.raises(AssertionError, match="max abs error"):
            assert_close(broken(edit)["embedding"], ref["embedding"], 1e-4, what=edit.__name__)
    # A magnitude (not power) front end is caught by the front-end check.
    magnitude = np.sqrt(np.maximum(panns_features.power_spectrogram(audio.astype(np.float64)), 0.0))
    wrong = 20.0 * np.log10(np.maximum(magnitude @ panns_features.mel_filters(PannsFrontEnd()), 1e-10))
    with pytest.raises(AssertionError, match="max abs error"):
        assert_close(wrong, ref["log_mel"], 1e-5)


def test_round_trip_and_front_end_check(reference):
    model, params, _, _ = reference
    state = panns_convert.to_torch(params)
    # Exactly the keys and shapes a strict load_state_dict checks, with the reference's values: learned tensors
    # bit for bit (transposes only), the front end's recomputed matrices to float32 rounding, the counters as 0.
    expected = {k: v.numpy() for k, v in model.state_dict().items()}
    assert sorted(state) == sorted(expected)
    recomputed = (panns_convert.CONV_REAL, panns_convert.CONV_IMAG, panns_convert.MEL_W)
    for key, value in expected.items():
        assert state[key].shape == value.shape and state[key].dtype == value.dtype, key
        if key in recomputed:
            np.testing.assert_allclose(state[key], value, rtol=0, atol=1e-7, err_msg=key)
        elif not key.endswith("num_batches_tracked"):
            assert np.array_equal(state[key], value), key
    # The stored front-end matrices are those recomputed here (float32 rounding only).
    ref_state = expected
    panns_convert.check_front_end(ref_state, PannsConfig())
    # A checkpoint of other settings is refused with the key named, as is a missing key.
    other = PannsConfig(PannsFrontEnd(fmin=0.0))
    with pytest.raises(CheckpointError, match="logmel_extractor.melW differs"):
        panns_convert.to_flax(ref_state, other)
    with pytest.raises(CheckpointError, match="spectrogram_extractor.stft.conv_real.weight has shape"):
        panns_convert.to_flax(ref_state, PannsConfig(PannsFrontEnd(32000, 1024, 320, 64, 50, 14000)))
    incomplete = {k: v for k, v in ref_state.items() if k != "conv_block4.bn2.running_var"}
    with pytest.raises(CheckpointError, match=r"1 missing:\n\s+conv_block4/bn2/running_var"):
        panns_convert.to_flax({"model": incomplete})


def test_config_json_and_input_errors(tmp_path):
    config = PannsConfig(PannsFrontEnd(32000, 1024, 320, 64, 50, 14000), classes_num=10)
    assert panns_convert.config_from_json(panns_convert.config_to_json(config)) == config
    assert panns_convert.config_from_json({}) == PannsConfig()
    with pytest.raises(ValueError, match="unknown keys"):
        panns_convert.config_from_json({"window": 512})
    with pytest.raises(ValueError, match="64 mel bins"):
        PannsConfig(PannsFrontEnd(mel_bins=128))
    with pytest.raises(CheckpointError, match="zenodo"):
        panns_convert.load_panns(tmp_path / "missing.pth")
    short = jnp.zeros((1, PannsConfig().min_samples() - 1))
    abstract = jax.eval_shape(Cnn14().init, jax.random.key(0), jnp.zeros((1, 4960)))
    assert PannsConfig().min_samples() == 4960
    with pytest.raises(ValueError, match="pad them to at least 4960 samples"):
        jax.eval_shape(Cnn14().apply, abstract, short)
    with pytest.raises(ValueError, match="too short for the PANNs front end"):
        panns_features.log_mel(np.zeros(256))
