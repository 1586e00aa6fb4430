"""VGGish (the FAD embedding) against torchvggish (PyPI ``torchvggish``, whose ``VGG`` / ``make_layers`` /
``vggish_input`` / ``mel_features`` are those of the ``harritaylor/torchvggish`` hub model the FAD tools load): the
front end against ``waveform_to_examples`` and ``mel_features``, the network at full size with every tensor re-drawn
(seeded), saved by ``torch.save`` and read back through our converter, as the FAD tools use it (no PCA, last ReLU
removed); conversion errors and the checks a wrong layout must fail."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close, perturb_every_tensor

from audioldm2_jax.audio import vggish_features as vf
from audioldm2_jax.compilation import compile_lowered
from audioldm2_jax.convert import vggish as convert
from audioldm2_jax.convert.weights import CheckpointError
from audioldm2_jax.models.vggish import VGGish, VGGishConfig, vggish_embeddings

import torch
from torchvggish import mel_features, vggish_input
from torchvggish.torchvggish import VGG, make_layers

# 3.3 s: 328 frames -> 3 examples and 40 frames dropped, as in the reference.
SECONDS = 3.3


def _wave(num_samples: int, seed: int = 0) -> np.ndarray:
    """Noise plus a chirp, float32 in [-1, 1] (what the FAD tools read from a WAV)."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / vf.SAMPLE_RATE
    chirp = 0.5 * np.sin(2 * np.pi * (200 * t + 600 * t ** 2))
    return np.clip(chirp + 0.2 * rng.standard_normal(num_samples), -1, 1).astype(np.float32)


@pytest.fixture(scope="module")
def reference():
    """torchvggish's VGG with every tensor re-drawn and its last ReLU removed, as the FAD tools run it
    (``embeddings = Sequential(*children[:-1])``, ``postprocess = False``); eval mode."""
    torch.manual_seed(0)
    model = VGG(make_layers(), postprocess=False)
    perturb_every_tensor(model, seed=15)
    model.embeddings = torch.nn.Sequential(*list(model.embeddings.children())[:-1])
    return model.eval()


@pytest.fixture(scope="module")
def params(reference, tmp_path_factory):
    """The reference's state dict saved by ``torch.save`` in the legacy (pre-zip) format, as the published
    ``vggish-10086976.pth`` of 2019, and loaded through the converter (no torch on our side)."""
    path = tmp_path_factory.mktemp("vggish") / "vggish.pth"
    torch.save(reference.state_dict(), path, _use_new_zipfile_serialization=False)
    return jax.device_put(convert.load_params(path))  # on the device once, not at every call


@pytest.fixture(scope="module")
def examples():
    """``[5, 96, 64]``: the reference front end's 3 examples of a 3.3 s clip plus 2 of random values (so that the
    network does not see only the mel range of real audio). One batch shape for every network test: one compile."""
    real = vggish_input.waveform_to_examples(_wave(int(SECONDS * 16000)), 16000, return_tensor=False)
    return np.concatenate([real, np.random.default_rng(1).normal(-2, 2, (2, 96, 64))]).astype(np.float32)


@pytest.fixture(scope="module")
def reference_embeddings(reference, examples):
    return _reference_embeddings(reference, examples)


_COMPILED = {}


def _run(fn, params, *args):
    """``fn(params, *args)``, compiled once per function and argument shapes with the project's CPU compile options
    (XLA's YNNPACK fusions run VGGish's convolutions 8x slower on this CPU)."""
    leaves, treedef = jax.tree_util.tree_flatten((params, *args))
    key = (fn, treedef, tuple((x.shape, str(x.dtype)) for x in leaves))
    if key not in _COMPILED:
        _COMPILED[key] = compile_lowered(jax.jit(fn).lower(params, *args))
    return _COMPILED[key](params, *args)


@functools.lru_cache(maxsize=None)
def _embed(config: VGGishConfig = VGGishConfig()):
    return functools.partial(_run, lambda p, x: VGGish(config).apply({"params": p}, x))


def _reference_embeddings(model, examples: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(examples)[:, None]).numpy()


# ----------------------------------------------------------------------------------------------------------------
# Front end
# ----------------------------------------------------------------------------------------------------------------


def test_mel_matrix_and_log_mel_frames_match_mel_features():
    """The HTK filter bank (mel-linear triangles, DC zeroed) exactly, and the float64 log-mel frames of an odd-length
    clip to float64 rounding."""
    np.testing.assert_array_equal(vf.mel_matrix(), mel_features.spectrogram_to_mel_matrix(
        num_mel_bins=64, num_spectrogram_bins=257, audio_sample_rate=16000, lower_edge_hertz=125,
        upper_edge_hertz=7500))
    wave = _wave(16000 + 1234).astype(np.float64)
    ref = mel_features.log_mel_spectrogram(wave, audio_sample_rate=16000, log_offset=0.01, window_length_secs=0.025,
                                           hop_length_secs=0.010, num_mel_bins=64, lower_edge_hertz=125,
                                           upper_edge_hertz=7500)
    ours = vf.log_mel(wave)
    assert ours.shape == ref.shape == (vf.num_frames(wave.shape[0]), 64)
    err = assert_close(ours, ref, rel=1e-12, what="log-mel frames (float64)")
    print(f"log-mel frames float64: max abs error {err:.1e} of scale")


@pytest.mark.parametrize("num_samples", [vf.MIN_SAMPLES - 1, vf.MIN_SAMPLES, int(SECONDS * 16000), 160000])
def test_examples_match_waveform_to_examples(num_samples):
    """Example count (none below 0.975 s; 10 for a 10 s clip) and values: the host path (float64 inside, float32
    out) to float32 rounding, the jitted float32 device path to 1e-5 of scale."""
    wave = _wave(num_samples, seed=num_samples)
    ref = vggish_input.waveform_to_examples(wave, 16000, return_tensor=False).astype(np.float32)
    ours = vf.waveform_to_examples(wave)
    assert ours.shape == ref.shape == (vf.num_examples(num_samples), 96, 64)
    if num_samples == 160000:
        assert ours.shape[0] == 10
    if ref.shape[0] == 0:
        with pytest.raises(ValueError, match="at least 15600 samples"):
            vf.log_mel_examples(jnp.asarray(wave))
        return
    host = assert_close(ours, ref, rel=1e-6, what="examples (host)")
    device = assert_close(jax.jit(vf.log_mel_examples)(jnp.asarray(wave)), ref, rel=1e-5, what="examples (device)")
    print(f"examples of {num_samples} samples: host {host:.1e}, device {device:.1e} of scale")


def test_front_end_input_errors():
    with pytest.raises(ValueError, match="16000 Hz"):
        vf.waveform_to_examples(_wave(32000), sample_rate=32000)
    with pytest.raises(ValueError, match=r"one mono clip \[N\]"):
        vf.waveform_to_examples(np.zeros((16000, 2), np.float32))
    with pytest.raises(ValueError, match="shorter than one VGGish window"):
        vf.log_mel(np.zeros(399))


# ----------------------------------------------------------------------------------------------------------------
# Network
# ----------------------------------------------------------------------------------------------------------------


def test_embeddings_match_reference(params, examples, reference_embeddings):
    """fp32 embeddings to 1e-4 of scale; the final-ReLU variant against the reference's output with its ReLU."""
    ref = reference_embeddings
    assert ref.shape == (5, 128) and (ref < 0).any()  # no ReLU at the end
    err = assert_close(_embed()(params, examples), ref, what="embeddings")
    err_relu = assert_close(_embed(VGGishConfig(final_relu=True))(params, examples), np.maximum(ref, 0),
                            what="embeddings with the final ReLU")
    print(f"embeddings: max abs error {err:.1e} of scale {np.abs(ref).max():.2f}; with ReLU {err_relu:.1e}")


def test_waveform_to_embeddings_chain(reference, params):
    """``vggish_embeddings`` (device front end + network, a batch of two clips) against torchvggish's
    ``waveform_to_examples`` + VGG on each clip, to 1e-4 of scale."""
    waves = np.stack([_wave(int(SECONDS * 16000), seed=s) for s in (3, 4)])
    ours = _run(vggish_embeddings, params, jnp.asarray(waves))
    ref = np.stack([_reference_embeddings(reference, vggish_input.waveform_to_examples(w, 16000, return_tensor=False)
                                          .astype(np.float32)) for w in waves])
    assert ours.shape == (2, 3, 128)
    err = assert_close(ours, ref, what="waveform -> embeddings")
    print(f"waveform -> embeddings: max abs error {err:.1e} of scale")


def test_wrong_layouts_fail(params, examples, reference_embeddings):
    """The parity check catches a transposed convolution kernel (time and mel swapped) and the reference's NCHW
    flatten order without its transpose (the first Linear's rows permuted)."""
    ref = reference_embeddings
    transposed = jax.tree_util.tree_map(lambda x: x, params)
    transposed["features_3"]["kernel"] = jnp.swapaxes(params["features_3"]["kernel"], 0, 1)
    with pytest.raises(AssertionError, match="max abs error"):
        assert_close(_embed()(transposed, examples), ref)
    # A converter that took torch's flatten for NCHW (channel, time, mel) order would put the weights of feature
    # (h, w, c) at row c * 24 + h * 4 + w instead of h * 2048 + w * 512 + c.
    kernel = np.asarray(params["embeddings_0"]["kernel"])
    nchw = kernel.reshape(6, 4, 512, -1).transpose(2, 0, 1, 3).reshape(kernel.shape)
    permuted = jax.tree_util.tree_map(lambda x: x, params)
    permuted["embeddings_0"]["kernel"] = nchw
    with pytest.raises(AssertionError, match="max abs error"):
        assert_close(_embed()(permuted, examples), ref)


# ----------------------------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------------------------


def test_conversion_round_trip_and_postprocessor(reference, params):
    """The legacy-format file reads as the in-memory state dict; a state dict with the PCA postprocessor's
    parameters (``VGGish(postprocess=True)``) converts to the same tree; ``to_torch`` inverts ``to_flax``."""
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    with_pca = dict(state, **{"pproc.pca_eigen_vectors": np.eye(128, dtype=np.float32),
                              "pproc.pca_means": np.zeros((128, 1), np.float32)})
    direct = convert.to_flax(with_pca)
    # np.array_equal: assert_array_equal's NaN bookkeeping takes seconds on the 50M-entry first Linear.
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, direct, params))
    back = convert.to_torch(params)
    assert back.keys() == state.keys()
    assert all(np.array_equal(back[key], state[key]) for key in state), "to_torch(to_flax(state)) != state"


def test_conversion_errors(reference):
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    missing = {k: v for k, v in state.items() if k != "embeddings.4.bias"}
    with pytest.raises(CheckpointError, match=r"(?s)vggish.*1 missing.*embeddings_4/bias"):
        convert.to_flax(missing)
    misshaped = dict(state, **{"features.0.weight": state["features.0.weight"][:, :, :2]})
    with pytest.raises(CheckpointError, match=r"(?s)misshaped.*features\.0\.weight"):
        convert.to_flax(misshaped, source="my.pth")
    with pytest.raises(ValueError, match=r"\[B, 96, 64\]"):
        _embed()(convert.to_flax(state), np.zeros((1, 64, 96), np.float32))
