"""HiFi-GAN vocoder parity with transformers' SpeechT5HifiGan: the configuration transformers' own tests build
(``SpeechT5HifiGanTester``) and variants of every option, with every tensor of the reference re-drawn (fan-in scaled
kernels, biases, normalisation statistics); weight-norm folding, output length, config reading and conversion
errors."""

import functools
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import assert_close
from reference_init import fan_in_vocoder

from audioldm2_jax import components
from audioldm2_jax.convert.weights import CheckpointError
from audioldm2_jax.models.vocoder import HifiGanVocoder, VocoderConfig

import torch
import transformers

# The published stage pattern (rate 5 kernel 16 -> 5n + 1, rate 4 kernel 16, rate 2 kernel 8) plus a stage whose
# kernel - rate is odd (rate 3 kernel 6: padding 1, 3n + 1), two MRF kernels with different dilation counts, a
# non-default slope, and input normalisation.
SMALL = dict(model_in_dim=16, upsample_initial_channel=64, upsample_rates=[5, 4, 2, 3],
             upsample_kernel_sizes=[16, 16, 8, 6], resblock_kernel_sizes=[3, 7],
             resblock_dilation_sizes=[[1, 3, 5], [1, 2]], leaky_relu_slope=0.2, normalize_before=True)
FRAMES = 9
PUBLISHED = Path(__file__).resolve().parents[1] / "audioldm2_jax/configs/published/audioldm2-base"


CASES = {
    "small: published stage pattern, odd k - u, two MRF kernels, slope 0.2, normalize_before": SMALL,
    # SpeechT5HifiGanTester: transformers' defaults (4 x rate 4 kernel 8, 3 MRF kernels, normalize_before) at 32
    # channels.
    "transformers' tester (model_in_dim 20, 32 channels, defaults)": dict(model_in_dim=20, upsample_initial_channel=32),
    # Channels halve with rounding down: 24 -> 12, 6, 3, 1.
    "24 channels over 4 stages, one MRF kernel, no normalize_before": dict(
        model_in_dim=12, upsample_initial_channel=24, upsample_rates=[2, 2, 3, 2], upsample_kernel_sizes=[4, 4, 7, 4],
        resblock_kernel_sizes=[5], resblock_dilation_sizes=[[1, 2]], normalize_before=False),
    # The reference pairs the lists with zip: the extra kernel size and dilation list are never used.
    "extra upsample kernel size and dilation list": dict(
        model_in_dim=8, upsample_initial_channel=16, upsample_rates=[3, 2], upsample_kernel_sizes=[7, 4, 9],
        resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3], [2]], leaky_relu_slope=0.05),
}


def _reference(seed: int, weight_norm: bool = False, base: dict = SMALL, **overrides):
    torch.manual_seed(seed)
    model = transformers.SpeechT5HifiGan(transformers.SpeechT5HifiGanConfig(**{**base, **overrides})).eval()
    fan_in_vocoder(model)
    if weight_norm:
        model.apply_weight_norm()
    return model


@functools.lru_cache(maxsize=None)
def _vocode(config: VocoderConfig):
    return jax.jit(lambda params, mel: HifiGanVocoder(config).apply({"params": params}, mel))


def _compare(ref, folder, what):
    config, params, _ = components.load("vocoder", folder)
    mel = np.random.default_rng(0).normal(size=(2, FRAMES, config.model_in_dim)).astype(np.float32)
    ours = _vocode(config)(params, mel)
    with torch.no_grad():
        theirs = ref(torch.from_numpy(mel)).numpy()
    assert ours.shape == theirs.shape == (2, config.output_length(FRAMES))
    assert np.abs(theirs).max() > 0.05, "reference output too small to compare"
    err = assert_close(ours, theirs, what=what)
    print(f"{what}: relative error {err:.1e}, scale {np.abs(theirs).max():.2f}, std {theirs.std():.2f}")
    return config


@pytest.mark.parametrize("case", list(CASES))
def test_waveform_matches_transformers(tmp_path, case):
    ref = _reference(0, base=CASES[case])
    ref.save_pretrained(tmp_path)
    config = _compare(ref, tmp_path, case)
    for key in ("model_in_dim", "upsample_initial_channel", "leaky_relu_slope", "normalize_before"):
        assert getattr(config, key) == getattr(ref.config, key), key
    if case == next(iter(CASES)):
        assert config.output_length(FRAMES) == ((((FRAMES * 5 + 1) * 4) * 2) * 3 + 1)


def test_unbatched_spectrogram(tmp_path):
    """One [T, model_in_dim] spectrogram gives one [N] waveform, as in the reference."""
    ref = _reference(4)
    ref.save_pretrained(tmp_path)
    config, params, _ = components.load("vocoder", tmp_path)
    mel = np.random.default_rng(1).normal(size=(FRAMES, config.model_in_dim)).astype(np.float32)
    ours = HifiGanVocoder(config).apply({"params": params}, mel)
    with torch.no_grad():
        theirs = ref(torch.from_numpy(mel)).numpy()
    assert ours.shape == theirs.shape == (config.output_length(FRAMES),)
    assert_close(ours, theirs, what="un-batched waveform")
    with pytest.raises(ValueError, match="log-mel"):
        HifiGanVocoder(config).apply({"params": params}, mel[..., :3])


def test_a_wrong_mapping_is_caught(tmp_path):
    """With every tensor re-drawn, swapping the biases of a residual block's two convolutions fails the comparison."""
    ref = _reference(5)
    ref.save_pretrained(tmp_path)
    config, params, _ = components.load("vocoder", tmp_path)
    block = params["resblocks_1"]
    block["convs1_0"]["bias"], block["convs2_0"]["bias"] = block["convs2_0"]["bias"], block["convs1_0"]["bias"]
    mel = np.random.default_rng(0).normal(size=(2, FRAMES, config.model_in_dim)).astype(np.float32)
    with torch.no_grad():
        theirs = ref(torch.from_numpy(mel)).numpy()
    with pytest.raises(AssertionError, match="max abs error"):
        assert_close(_vocode(config)(params, mel), theirs)


def _fields(config) -> dict:
    def plain(v):
        return tuple(plain(x) for x in v) if isinstance(v, (list, tuple)) else v

    return {key: plain(getattr(config, key)) for key in VocoderConfig.__dataclass_fields__}


def test_config_reads_like_transformers(tmp_path):
    """Every key of a saved config.json, dropped one at a time, reads as transformers reads the same dict (its
    defaults fill the gap)."""
    # Every field away from its default, with list lengths that stay consistent when one list falls back to it.
    _reference(6, base=dict(model_in_dim=12, sampling_rate=22050, upsample_initial_channel=48,
                            upsample_rates=[2, 2, 3, 2], upsample_kernel_sizes=[4, 4, 7, 4],
                            resblock_kernel_sizes=[3, 5, 7], resblock_dilation_sizes=[[1, 2], [1], [2, 3]],
                            leaky_relu_slope=0.2, normalize_before=False)).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for key in [None, *VocoderConfig.__dataclass_fields__]:
        d = {k: v for k, v in saved.items() if k != key}
        ours = VocoderConfig.from_transformers(d)
        assert _fields(ours) == _fields(transformers.SpeechT5HifiGanConfig.from_dict(d)), f"without {key!r}"
    assert _fields(VocoderConfig.from_transformers({})) == _fields(transformers.SpeechT5HifiGanConfig())


def test_weight_norm_checkpoint_is_folded(tmp_path):
    """A model saved with weight norm applied stores parametrizations.weight.original0/1; they fold to weights."""
    ref = _reference(1, weight_norm=True)
    ref.save_pretrained(tmp_path)
    from safetensors.numpy import load_file

    keys = load_file(str(tmp_path / "model.safetensors")).keys()
    assert any(k.endswith("parametrizations.weight.original1") for k in keys)
    _compare(ref, tmp_path, "weight-norm waveform")


def test_published_config_length():
    published = json.loads((PUBLISHED / "vocoder.json").read_text())
    config = VocoderConfig.from_transformers(published)
    assert config == VocoderConfig() and config.hop_length == 160
    for frames in (1, 7, 1024):
        assert config.output_length(frames) == 160 * frames + 32


def test_bad_checkpoints(tmp_path):
    ref = _reference(2, normalize_before=False)
    ref.save_pretrained(tmp_path / "good")
    config, params, _ = components.load("vocoder", tmp_path / "good")
    assert "mean" not in params and "scale" not in params  # unused buffers are dropped
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        components.load("vocoder", bad)
    saved = json.loads((tmp_path / "good" / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(saved))
    with pytest.raises(CheckpointError, match="no weights"):
        components.load("vocoder", bad)
    (bad / "model.safetensors").symlink_to(tmp_path / "good" / "model.safetensors")
    (bad / "config.json").write_text(json.dumps({**saved, "upsample_initial_channel": 32}))
    with pytest.raises(CheckpointError, match=r"misshaped[\s\S]*upsampler\.0\.weight"):
        components.load("vocoder", bad)
    (bad / "config.json").write_text(json.dumps({**saved, "upsample_kernel_sizes": [4, 16, 8, 6]}))
    with pytest.raises(CheckpointError, match="upsample_kernel_sizes"):
        components.load("vocoder", bad)
    (bad / "config.json").write_text(json.dumps({**saved, "upsample_kernel_sizes": [16, 16, 8]}))
    with pytest.raises(CheckpointError, match="upsample_kernel_sizes has 3 entries"):
        components.load("vocoder", bad)
    (bad / "config.json").write_text(json.dumps({**saved, "resblock_kernel_sizes": [3, 4]}))
    with pytest.raises(CheckpointError, match="odd"):
        components.load("vocoder", bad)
    (bad / "config.json").write_text(json.dumps({**saved, "upsample_initial_channel": 8}))
    with pytest.raises(CheckpointError, match="upsample_initial_channel=8"):
        components.load("vocoder", bad)


def test_fold_legacy_weight_norm():
    """``torch.nn.utils.weight_norm`` (weight_g / weight_v, g over dim 0) folds to the module's effective weight,
    for a transposed convolution whose dim 0 is its input channels."""
    from audioldm2_jax.convert.vocoder import fold_weight_norm

    torch.manual_seed(3)
    layer = torch.nn.utils.weight_norm(torch.nn.ConvTranspose1d(4, 3, 5))
    with torch.no_grad():
        layer.weight_g.mul_(torch.rand_like(layer.weight_g) + 0.5)
        layer(torch.zeros(1, 4, 2))  # the pre-forward hook recomputes .weight from g and v
    state = {f"up.{k}": v.detach().numpy() for k, v in layer.state_dict().items()}
    assert set(state) == {"up.bias", "up.weight_g", "up.weight_v"}
    folded = fold_weight_norm(state)
    assert set(folded) == {"up.bias", "up.weight"}
    np.testing.assert_allclose(folded["up.weight"], layer.weight.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_a_steady_spectrogram_renders_a_hop_periodic_waveform(tmp_path):
    """Why the quickstart's audio pitch check reads at chance (docs/training.md): HiFi-GAN is equivariant to a shift
    of one frame in, ``hop`` samples out, so on a mel that is the same in every frame (a held note of a steady tone)
    its output away from the edges repeats every ``hop`` samples: only multiples of ``sample_rate / hop`` (100 Hz for
    the pipeline) can sound, whatever the weights. Checked on the reference itself and on ours."""
    ref = _reference(2, base=SMALL)
    ref.save_pretrained(tmp_path)
    config, params, _ = components.load("vocoder", tmp_path)
    hop = int(np.prod(config.upsample_rates))
    frame = np.random.default_rng(3).normal(size=(1, 1, config.model_in_dim)).astype(np.float32)
    mel = np.repeat(frame, 48, axis=1)
    with torch.no_grad():
        theirs = ref(torch.from_numpy(mel)).numpy()[0]
    ours = np.asarray(_vocode(config)(params, mel))[0]
    for wave in (theirs, ours):
        interior = wave[16 * hop:32 * hop]
        assert np.abs(interior).max() > 1e-3
        # a period of hop samples; a period of hop - 1 or hop + 1 (what another pitch needs) does not hold
        assert np.abs(interior[hop:] - interior[:-hop]).max() <= 1e-5 * np.abs(interior).max()
        for other in (hop - 1, hop + 1):
            assert np.abs(interior[other:] - interior[:-other]).max() > 0.1 * np.abs(interior).max()
