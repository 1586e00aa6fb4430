"""VITS phoneme text encoder parity against transformers' ``VitsModel.text_encoder``: the configuration
transformers' own VITS tests build (``VitsModelTester``), AudioLDM 2's speech encoder shape, and variants of every
text-encoder option, each saved with ``save_pretrained`` and loaded through our converter.

Every tensor of the reference is perturbed (seeded noise at the fan-in scale): transformers starts biases at zero
and layer norms at one, which would hide a wrong mapping of any of them (q and k biases swapped, say).
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import assert_close, perturb_every_tensor

from audioldm2_jax import components
from audioldm2_jax.convert import vits_text
from audioldm2_jax.convert.weights import CheckpointError
from audioldm2_jax.models.vits_text import VitsTextConfig, VitsTextEncoder, mark_end_of_phonemes

# The rest of VITS (flow, vocoder, duration predictor, posterior encoder) as transformers' tester builds it: saved
# too, but never read.
UPSTREAM = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64, flow_size=16, vocab_size=38,
                spectrogram_bins=8, duration_predictor_num_flows=2, prior_encoder_num_flows=2,
                duration_predictor_filter_channels=16, posterior_encoder_num_wavenet_layers=2,
                upsample_initial_channel=16, upsample_rates=[8, 2], upsample_kernel_sizes=[16, 4],
                resblock_kernel_sizes=[3, 7], resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]])

CASES = {
    "tester (window 4, relu)": {},
    # AudioLDM 2's speech text encoder: its 183-symbol vocabulary, here with a window shorter than some inputs.
    "audioldm2 vocab 183, window 3, ffn 24": dict(vocab_size=183, window_size=3, ffn_dim=24, flow_size=8),
    "no biases": dict(use_bias=False),
    "gelu, 4 heads, eps 1e-3": dict(hidden_act="gelu", num_attention_heads=4, layer_norm_eps=1e-3),
    "ffn kernel 1, window 1": dict(ffn_kernel_size=1, window_size=1),
    "even ffn kernel 4 (asymmetric padding)": dict(ffn_kernel_size=4, hidden_act="gelu_new"),
    "3 layers, ffn kernel 5, quick_gelu": dict(num_hidden_layers=3, ffn_kernel_size=5, hidden_act="quick_gelu"),
}




def save_reference(folder, seed=0, **overrides):
    torch.manual_seed(seed)
    model = transformers.VitsModel(transformers.VitsConfig(**{**UPSTREAM, **overrides})).eval()
    perturb_every_tensor(model, seed)
    model.save_pretrained(folder)
    return model


def run_reference(model, ids, mask):
    with torch.no_grad():
        ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
        out = model.text_encoder(ids_t, attention_mask=mask_t, padding_mask=mask_t.unsqueeze(-1))
    return out.last_hidden_state.numpy(), out.prior_means.numpy(), out.prior_log_variances.numpy()


@functools.lru_cache(maxsize=None)
def encode_fn(config: VitsTextConfig):
    return jax.jit(VitsTextEncoder(config).apply)


def phonemes(vocab: int, length: int, seed: int):
    """Row 0 unpadded; row 1 padded after half its length (for the 183-symbol vocabulary with the end-of-phonemes
    mark AudioLDM 2's speech pipeline adds); row 2 with random holes ending on a phoneme (transformers' tests draw
    masks this way)."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(1, vocab - 1, size=(3, length)).astype(np.int64)
    ids[1, max(1, length // 2):] = 0
    mask = (ids != 0).astype(np.int64)
    if vocab == 183:
        ids, mask = mark_end_of_phonemes(ids, mask)  # the second row stays padded
    mask[2] = rng.randint(0, 2, size=length)
    mask[2, -1] = 1
    assert mask[1].sum() < length
    return ids, mask


def compare(model, config, params, length, what):
    ids, mask = phonemes(config.vocab_size, length, length)
    ref = run_reference(model, ids, mask)
    ours = encode_fn(config)({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
    assert ours.last_hidden_state.shape == (3, length, config.hidden_size)
    errors = [assert_close(a, b, what=f"{what} {name}") for name, a, b in
              zip(("last_hidden_state", "prior_means", "prior_log_variances"), ours, ref)]
    print(f"{what}, length {length}: max error / scale {max(errors):.2e}")
    np.testing.assert_array_equal(np.asarray(ours.last_hidden_state)[mask == 0], 0.0)
    return ours, ref


@pytest.mark.parametrize("case", list(CASES))
def test_hidden_states_match_reference(tmp_path, case):
    model = save_reference(tmp_path, **CASES[case])
    config, params, _ = components.load("vits", tmp_path)
    for key in VitsTextConfig.__dataclass_fields__:
        assert getattr(config, key) == getattr(model.config, key), key
    # Longer and shorter than the relative window + 1 (the reference pads / slices its tables differently).
    for length in (9, 3):
        compare(model, config, params, length, f"VITS {case}")


def test_a_wrong_mapping_is_caught(tmp_path):
    """With every tensor perturbed, swapping the q and k projection biases (which transformers starts at zero)
    fails the comparison."""
    model = save_reference(tmp_path)
    config, params, _ = components.load("vits", tmp_path)
    attention = params["encoder"]["layers_1"]["attention"]
    attention["q_proj"]["bias"], attention["k_proj"]["bias"] = attention["k_proj"]["bias"], attention["q_proj"]["bias"]
    with pytest.raises(AssertionError, match="max abs error"):
        compare(model, config, params, 9, "VITS with q / k biases swapped")


def test_config_reads_like_transformers(tmp_path):
    """Every text-encoder key of a saved config.json, dropped one at a time, reads as transformers reads the same
    dict; the dataclass defaults are transformers' defaults."""
    save_reference(tmp_path, window_size=3, use_bias=False, hidden_act="gelu", ffn_kernel_size=5, layer_norm_eps=1e-4)
    saved = json.loads((tmp_path / "config.json").read_text())
    fields = VitsTextConfig.__dataclass_fields__
    for key in [None, *fields]:
        d = {k: v for k, v in saved.items() if k != key}
        reference = transformers.VitsConfig.from_dict(d)
        ours = VitsTextConfig.from_transformers(d)
        assert {f: getattr(ours, f) for f in fields} == {f: getattr(reference, f) for f in fields}, f"without {key!r}"
    reference = transformers.VitsConfig()
    assert {f: getattr(VitsTextConfig(), f) for f in fields} == {f: getattr(reference, f) for f in fields}


def test_mark_end_of_phonemes():
    ids = np.array([[5, 6, 0, 0], [5, 6, 7, 8]])
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]])
    new_ids, new_mask = mark_end_of_phonemes(ids, mask)
    np.testing.assert_array_equal(new_ids, [[5, 6, 182, 0], [5, 6, 7, 8]])
    np.testing.assert_array_equal(new_mask, [[1, 1, 1, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(ids, [[5, 6, 0, 0], [5, 6, 7, 8]])  # inputs untouched


def test_errors_name_the_key(tmp_path):
    model = save_reference(tmp_path)
    with pytest.raises(ValueError, match="hidden_act"):
        VitsTextConfig.from_transformers({"hidden_act": "prelu"})  # an activation with learned weights
    config = VitsTextConfig.from_transformers(model.config.to_dict())
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    del state["text_encoder.encoder.layers.1.attention.emb_rel_v"]
    with pytest.raises(CheckpointError, match="layers_1/attention/emb_rel_v"):
        vits_text.to_flax(state, config)
