"""The attention entry point's CPU path (one matrix product pair per example and head) against torch's
``scaled_dot_product_attention`` and against ``jax.nn.dot_product_attention``, with every way the models call it:
additive biases of several broadcast shapes, boolean masks, causal masking, cross-attention, a fully masked row."""

import numpy as np
import pytest
import torch
from conftest import assert_close

import jax
import jax.numpy as jnp

from audioldm2_jax.models.layers import (PER_HEAD_MIN_SCORES, dot_product_attention, per_head_attention,
                                         xla_attention)

RNG = np.random.default_rng(0)


def _normal(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _torch_attention(q, k, v, bias=None, mask=None, scale=None, is_causal=False):
    """torch's SDPA on [B, L, N, D] inputs (it takes [B, N, L, D]); a boolean mask and a float bias are combined as
    the additive mask torch accepts."""
    t = lambda x: torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 2, 1, 3)))  # noqa: E731
    attn_mask = None
    if bias is not None:
        attn_mask = torch.from_numpy(np.asarray(bias, np.float32))
    if mask is not None:
        blocked = torch.from_numpy(~np.asarray(mask)) * torch.tensor(-1e30)
        attn_mask = blocked if attn_mask is None else attn_mask + blocked
    out = torch.nn.functional.scaled_dot_product_attention(t(q), t(k), t(v), attn_mask=attn_mask, scale=scale,
                                                          is_causal=is_causal)
    return out.numpy().transpose(0, 2, 1, 3)


@pytest.mark.parametrize("case", ["plain", "key_padding_mask", "bias_per_head", "bias_per_query", "causal", "cross"])
def test_per_head_attention_matches_torch_and_jax(case):
    b, lq, lk, n, d = 2, 24, 24, 3, 8
    if case == "cross":
        lk = 7
    q, k, v = _normal(b, lq, n, d), _normal(b, lk, n, d), _normal(b, lk, n, d)
    kwargs = {}
    if case == "key_padding_mask":
        mask = np.ones((b, 1, 1, lk), bool)
        mask[1, ..., 15:] = False
        kwargs["mask"] = mask
    elif case == "bias_per_head":  # T5's relative position bias
        kwargs["bias"] = _normal(1, n, lq, lk)
    elif case == "bias_per_query":  # the UNet's additive text mask
        kwargs["bias"] = np.where(RNG.random((b, 1, 1, lk)) < 0.3, -1e4, 0.0).astype(np.float32)
    elif case == "causal":
        kwargs["is_causal"] = True
    scale = 0.25 if case == "plain" else None
    ours = per_head_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), scale=scale, **kwargs)
    assert ours.shape == (b, lq, n, d)
    assert_close(ours, _torch_attention(q, k, v, scale=scale, **kwargs), rel=1e-5, what=f"vs torch ({case})")
    assert_close(ours, jax.nn.dot_product_attention(q, k, v, scale=scale, **kwargs), rel=1e-5, what=f"vs jax ({case})")


def test_fully_masked_row_is_uniform_as_in_jax():
    q, k, v = _normal(1, 4, 2, 8), _normal(1, 6, 2, 8), _normal(1, 6, 2, 8)
    mask = np.zeros((1, 1, 4, 6), bool)
    mask[..., :2, :3] = True  # rows 2 and 3 attend to nothing
    ours = per_head_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask=mask)
    assert_close(ours, jax.nn.dot_product_attention(q, k, v, mask=mask), rel=1e-5)
    assert_close(ours[0, 2:], np.broadcast_to(v[0].mean(axis=0), (2, 2, 8)), rel=1e-5)


def test_entry_point_takes_the_per_head_path_for_large_scores_on_cpu():
    """Above the threshold the CPU path runs (``lax.map``: a scan in the jaxpr) and still equals torch."""
    side = int(np.ceil(np.sqrt(PER_HEAD_MIN_SCORES)))
    q, k, v = _normal(1, side, 2, 4), _normal(1, side, 2, 4), _normal(1, side, 2, 4)
    jaxpr = str(jax.make_jaxpr(lambda *a: dot_product_attention(*a))(q, k, v))
    small = str(jax.make_jaxpr(lambda *a: dot_product_attention(*a))(q[:, :8], k[:, :8], v[:, :8]))
    assert jax.default_backend() == "cpu" and "scan" in jaxpr and "scan" not in small
    with xla_attention():  # what FLOP counting traces: the batched implementation
        assert "scan" not in str(jax.make_jaxpr(lambda *a: dot_product_attention(*a))(q, k, v))
    assert "scan" in str(jax.make_jaxpr(lambda *a: dot_product_attention(*a))(q, k, v))
    assert_close(dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)),
                 _torch_attention(q, k, v), rel=1e-5)
