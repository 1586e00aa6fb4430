"""VITS phoneme text encoder parity against transformers' ``VitsModel.text_encoder`` (random weights, small config)."""

import numpy as np
import pytest
import torch
from conftest import assert_close

import jax
import jax.numpy as jnp

from audioldm2_jax.convert.vits_text import convert_vits_text_state_dict, load_vits_text
from audioldm2_jax.convert.weights import CheckpointError
from audioldm2_jax.models.vits_text import VitsTextConfig, VitsTextEncoder, mark_end_of_phonemes

import transformers


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    # Text encoder at a small width; the rest of VITS (flow, vocoder, duration predictor, posterior encoder) as
    # small as the config allows, since it is saved too but never read.
    config = transformers.VitsConfig(
        vocab_size=183, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, window_size=3, ffn_dim=24,
        ffn_kernel_size=3, flow_size=8, upsample_initial_channel=8, upsample_rates=[2], upsample_kernel_sizes=[4],
        resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]], depth_separable_num_layers=1,
        duration_predictor_filter_channels=8, duration_predictor_num_flows=1, prior_encoder_num_flows=1,
        prior_encoder_num_wavenet_layers=1, posterior_encoder_num_wavenet_layers=1, spectrogram_bins=9)
    torch.manual_seed(0)
    model = transformers.VitsModel(config).eval()
    with torch.no_grad():  # layer norms start as identity: randomise them
        for name, p in model.text_encoder.named_parameters():
            if "layer_norm" in name:
                p.copy_(p + 0.3 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("vits")
    model.save_pretrained(folder)
    return model, folder


def _run_reference(model, ids, mask):
    with torch.no_grad():
        ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
        out = model.text_encoder(ids_t, attention_mask=mask_t, padding_mask=mask_t.unsqueeze(-1))
    return out.last_hidden_state.numpy(), out.prior_means.numpy(), out.prior_log_variances.numpy()


@pytest.mark.parametrize("length", [9, 3])  # longer and shorter than the relative window (3) + 1
def test_hidden_states_match_reference(reference, length):
    model, folder = reference
    config, params = load_vits_text(folder)
    assert config.vocab_size == 183 and config.window_size == 3
    rng = np.random.RandomState(length)
    ids = rng.randint(1, 182, size=(2, length)).astype(np.int64)
    ids[1, max(1, length // 2):] = 0
    mask = (ids != 0).astype(np.int64)
    ids, mask = mark_end_of_phonemes(ids, mask)  # as the speech pipeline does; the second row stays padded
    assert mask[1].sum() < length
    ref = _run_reference(model, ids, mask)
    ours = jax.jit(VitsTextEncoder(config).apply)(params, jnp.asarray(ids), jnp.asarray(mask))
    assert ours.last_hidden_state.shape == (2, length, 16)
    for name, a, b in zip(("last_hidden_state", "prior_means", "prior_log_variances"), ours, ref):
        err = assert_close(a, b, what=name)
        print(f"length {length} {name}: max error {err:.2e} of scale")
    np.testing.assert_array_equal(np.asarray(ours.last_hidden_state)[mask == 0], 0.0)


def test_mark_end_of_phonemes():
    ids = np.array([[5, 6, 0, 0], [5, 6, 7, 8]])
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]])
    new_ids, new_mask = mark_end_of_phonemes(ids, mask)
    np.testing.assert_array_equal(new_ids, [[5, 6, 182, 0], [5, 6, 7, 8]])
    np.testing.assert_array_equal(new_mask, [[1, 1, 1, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(ids, [[5, 6, 0, 0], [5, 6, 7, 8]])  # inputs untouched


def test_errors_name_the_key(reference):
    model, _ = reference
    with pytest.raises(ValueError, match="hidden_act"):
        VitsTextConfig.from_transformers({"hidden_act": "mish"})
    config = VitsTextConfig.from_transformers(model.config.to_dict())
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    del state["text_encoder.encoder.layers.1.attention.emb_rel_v"]
    with pytest.raises(CheckpointError, match="layers_1/attention/emb_rel_v"):
        convert_vits_text_state_dict(state, config)
