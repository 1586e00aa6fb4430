"""CLAP's audio front end against transformers' ``ClapFeatureExtractor`` (saved with ``save_pretrained`` and read
back through ``ClapFeatureConfig.from_preprocessor_config``): ``rand_trunc`` and ``fusion``, every padding mode,
the settings of transformers' own feature-extractor tester, and the random choices (crop offsets, the clip flagged
``is_longer``) reproduced from explicit generators seeded as NumPy's global one the reference draws from."""

import dataclasses
import inspect
import json

import numpy as np
import pytest
from conftest import assert_close

from audioldm2_jax.audio.clap_features import ClapCrops, ClapFeatureConfig, clap_audio_inputs, clap_input_features, \
    draw_crops, log_mel_spectrogram, mel_filters, random_crop_starts, resample_for_clap

import transformers

SR = 48000


def saved(tmp_path, **kwargs):
    """A reference extractor and our config read from the ``preprocessor_config.json`` it saves."""
    extractor = transformers.ClapFeatureExtractor(**kwargs)
    extractor.save_pretrained(tmp_path)
    config = ClapFeatureConfig.from_preprocessor_config(json.loads((tmp_path / "preprocessor_config.json").read_text()))
    return extractor, config


def reference(extractor, clips, seed, **kwargs):
    np.random.seed(seed)
    out = extractor(clips, sampling_rate=extractor.sampling_rate, return_tensors="np", **kwargs)
    return out["input_features"], out["is_longer"][:, 0]


def test_rand_trunc_matches_reference(tmp_path):
    """AudioLDM 2's extractor (clap-htsat-unfused): Slaney mel, one random crop per over-long clip."""
    extractor, config = saved(tmp_path, feature_size=64, sampling_rate=SR, hop_length=480, max_length_s=10,
                              fft_window_size=1024, frequency_min=50, frequency_max=14000, truncation="rand_trunc",
                              padding="repeatpad")
    assert config == ClapFeatureConfig()  # our defaults are this config
    rng = np.random.RandomState(1)
    # What AudioLDM 2 scores: 16 kHz waveforms resampled to 48 kHz with librosa. 10.24 s is longer than CLAP's 10 s
    # (one random crop); 3.5 s is tiled and padded; exactly 10 s passes through.
    long_clip = (rng.randn(2, 163840) * 0.1).astype(np.float32)
    resampled = resample_for_clap(long_clip)
    import librosa

    short = long_clip[:, :1001]
    np.testing.assert_array_equal(resample_for_clap(short), librosa.resample(short, orig_sr=16000, target_sr=48000))
    clips = list(resampled) + [(rng.randn(168000) * 0.2).astype(np.float32), rng.randn(480000).astype(np.float32)]
    ref, ref_longer = reference(extractor, clips, 123)
    np.random.seed(123)
    starts = random_crop_starts([len(c) for c in clips], config)
    assert starts[0] > 0 or starts[1] > 0
    feats = clap_input_features(clips, config, crop_starts=starts)
    assert feats.shape == (4, 1001, 64) and ref.shape == (4, 1, 1001, 64)
    err = assert_close(feats, ref[:, 0], rel=1e-6, what="log-mel features")
    print(f"rand_trunc: max error {err:.2e} of scale")
    # The general entry point: the same draws from an explicit generator, and is_longer as the reference sets it.
    views, longer = clap_audio_inputs(clips, config, rng=np.random.RandomState(123))
    np.testing.assert_array_equal(views, ref)
    np.testing.assert_array_equal(longer, ref_longer)


@pytest.mark.parametrize("padding", ["repeatpad", "repeat", "pad", "max_length"])
def test_fusion_matches_reference(tmp_path, padding):
    """transformers' default extractor (``fusion``, HTK mel 0-14 kHz): a short clip (padded, its mel 4 times), one
    exactly 10 s, one 10 s + 200 samples (longer, but within one hop: its whole mel 4 times, not flagged), and two
    fused clips (12 s, 25 s: the whole mel squeezed to 1001 frames + 3 random crops). Any padding other than
    repeat / repeatpad zero-pads, as in the reference."""
    extractor, config = saved(tmp_path, padding=padding)
    assert config.truncation == "fusion" and config.frequency_min == 0 and config.num_views == 4
    rng = np.random.RandomState(2)
    clips = [(rng.randn(n) * 0.1).astype(np.float32) for n in (168000, 480000, 480200, 576000, 1200000)]
    ref, ref_longer = reference(extractor, clips, 7)
    np.random.seed(7)
    ours, longer = clap_audio_inputs(clips, config, rng=np.random)  # NumPy's global generator, seeded alike
    assert ours.shape == ref.shape == (5, 4, 1001, 64) and ours.dtype == np.float32
    np.testing.assert_array_equal(longer, ref_longer)
    np.testing.assert_array_equal(longer, [False, False, False, True, True])
    # Everything but the squeezed view is the mel itself or a crop of it: exactly the reference's.
    np.testing.assert_array_equal(ours[:3], ref[:3])
    np.testing.assert_array_equal(ours[3:, 1:], ref[3:, 1:])
    # Bit-exact here; a torch build without fused multiply-adds rounds the bilinear weights differently (an error of
    # order 1e-5 of the scale), hence the project's parity tolerance rather than equality.
    err = assert_close(ours[3:, 0], ref[3:, 0], what="squeezed whole-clip mel")
    print(f"fusion ({padding}): squeezed view max error {err:.2e} of scale")
    # An explicit generator with the same seed makes the same draws.
    again, _ = clap_audio_inputs(clips, config, rng=np.random.RandomState(7))
    np.testing.assert_array_equal(again, ours)


def test_fusion_flags_one_clip_when_none_is_longer(tmp_path):
    extractor, config = saved(tmp_path, max_length_s=1)
    rng = np.random.RandomState(3)
    clips = [(rng.randn(n) * 0.1).astype(np.float32) for n in (20000, 48000, 31000, 9000, 47999)]
    flagged = set()
    for seed in range(6):
        ref, ref_longer = reference(extractor, clips, seed)
        ours, longer = clap_audio_inputs(clips, config, rng=seed)
        np.testing.assert_array_equal(ours, ref)
        np.testing.assert_array_equal(longer, ref_longer)
        assert longer.sum() == 1
        flagged.add(int(np.argmax(longer)))
    assert len(flagged) > 1  # the flag does follow the seed


def test_transformers_tester_settings(tmp_path):
    """``ClapFeatureExtractionTester``'s extractor: 10 mel bins at 4 kHz (so the default 14 kHz top frequency lies
    above Nyquist: the upper filters are empty, as in the reference), hop 160, extra keys it stores but never
    reads; inputs of 800-1200 samples in [0, 1), as lists or a 2-D array, with the default padding and with
    ``padding="max_length"`` (zero padding)."""
    extractor, config = saved(tmp_path, feature_size=10, hop_length=160, chunk_length=8, padding_value=0.0,
                              sampling_rate=4000, return_attention_mask=False, do_normalize=True)
    rng = np.random.RandomState(4)
    clips = [rng.rand(n) for n in (800, 1000, 1200)]
    for padding in (None, "max_length"):
        kwargs = {} if padding is None else {"padding": padding}
        cfg = config if padding is None else dataclasses.replace(config, padding=padding)
        ref, ref_longer = reference(extractor, [list(c) for c in clips], 0, **kwargs)
        ours, longer = clap_audio_inputs(clips, cfg, rng=0)
        assert ours.shape == ref.shape == (3, 4, 40000 // 160 + 1, 10)
        np.testing.assert_array_equal(ours, ref)
        np.testing.assert_array_equal(longer, ref_longer)
    same = np.stack([c[:800] for c in clips])
    ref, _ = reference(extractor, same, 0)
    np.testing.assert_array_equal(clap_audio_inputs(same, config, rng=0)[0], ref)


def test_top_db_is_not_applied(tmp_path):
    """The reference stores ``top_db`` but its log-mel never clips to it."""
    extractor, config = saved(tmp_path, top_db=10, truncation="rand_trunc", max_length_s=1)
    assert config.top_db == 10
    clip = (np.random.RandomState(5).randn(30000) * np.linspace(0, 1, 30000)).astype(np.float32)
    ref, _ = reference(extractor, [clip], 0)
    ours = clap_input_features([clip], config)
    assert ref.max() - ref.min() > 10  # clipping to 10 dB would have changed it
    np.testing.assert_array_equal(ours, ref[:, 0])


def test_preprocessor_config_defaults_are_the_reference_ones():
    """Keys a ``preprocessor_config.json`` omits take ``ClapFeatureExtractor``'s own defaults (``fusion``, 0 Hz)."""
    defaults = {name: p.default for name, p in inspect.signature(transformers.ClapFeatureExtractor).parameters.items()
                if p.default is not inspect.Parameter.empty}
    config = ClapFeatureConfig.from_preprocessor_config({"n_fft": 400, "chunk_length_s": 10, "nb_max_frames": 3})
    for field in dataclasses.fields(config):
        assert getattr(config, field.name) == defaults[field.name], field.name
    with pytest.raises(ValueError, match="feature_extractor_type"):
        ClapFeatureConfig.from_preprocessor_config({"feature_extractor_type": "WhisperFeatureExtractor"})
    with pytest.raises(ValueError, match="frequency_min"):
        ClapFeatureConfig.from_preprocessor_config({"frequency_min": 9000, "frequency_max": 8000})


def test_explicit_crops_and_refusals(tmp_path):
    extractor, config = saved(tmp_path, max_length_s=1)
    rng = np.random.RandomState(6)
    clips = [(rng.randn(n) * 0.1).astype(np.float32) for n in (30000, 100000)]
    crops = draw_crops([len(c) for c in clips], config, 9)
    assert crops.starts[0] is None and len(crops.starts[1]) == 3 and crops.forced_longer is None
    total, chunk = 100000 // 480 + 1, config.num_frames
    front, middle, back = crops.starts[1]
    assert front < middle < back <= total - chunk  # one offset from each third of the range
    explicit, _ = clap_audio_inputs(clips, config, crops=ClapCrops((None, (0, 1, total - chunk))))
    drawn, _ = clap_audio_inputs(clips, config, rng=9)
    np.testing.assert_array_equal(explicit[0], drawn[0])
    mel = log_mel_spectrogram(clips[1], config, mel_filters(config))  # the whole clip's HTK mel
    assert mel.shape[0] == total
    for view, start in zip(explicit[1, 1:], (0, 1, total - chunk)):
        np.testing.assert_array_equal(view, mel[start:start + chunk])
    with pytest.raises(ValueError, match="crop offset"):
        clap_audio_inputs(clips, config, crops=ClapCrops((None, (0, 1, total))))
    with pytest.raises(ValueError, match="3 crop offsets"):
        clap_audio_inputs(clips, config, crops=ClapCrops((None, None)))
    with pytest.raises(ValueError, match="use clap_audio_inputs"):
        clap_input_features(clips, config)
    # Refused where the reference fails too: fusing a long clip with other than 64 mel bins, a truncation it does
    # not implement applied to a long clip.
    extractor16, config16 = saved(tmp_path / "16", max_length_s=1, feature_size=16)
    with pytest.raises(ValueError):
        reference(extractor16, clips, 0)
    with pytest.raises(ValueError, match="64 bins"):
        clap_audio_inputs(clips, config16)
    np.testing.assert_array_equal(clap_audio_inputs(clips[:1], config16, rng=0)[0],
                                  reference(extractor16, clips[:1], 0)[0])  # a short clip fuses with any bins
    odd = dataclasses.replace(config, truncation="head")
    with pytest.raises(NotImplementedError):
        reference(extractor, clips, 0, truncation="head")
    with pytest.raises(ValueError, match="not implemented"):
        clap_audio_inputs(clips, odd)
    np.testing.assert_array_equal(clap_audio_inputs(clips[:1], odd)[0],
                                  reference(extractor, clips[:1], 0, truncation="head")[0])
