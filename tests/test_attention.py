"""The attention entry point's CPU path (one matrix product pair per example and head) against torch's
``scaled_dot_product_attention`` and against ``jax.nn.dot_product_attention``, with every way the models call it:
additive biases of several broadcast shapes, boolean masks, causal masking, cross-attention, a fully masked row.
Which implementation runs is a named option chosen for the target platform (or the training config), never by the
host's backend."""

import numpy as np
import pytest
import torch
from conftest import assert_close

import jax
import jax.numpy as jnp

from audioldm2_jax.models import layers
from audioldm2_jax.models.layers import (PER_HEAD_MIN_SCORES, attention_for_platform, dot_product_attention,
                                         per_head_attention, query_chunked_attention, resolve_attention,
                                         use_attention)
from audioldm2_jax.models.unet import AudioLDM2UNet, UNetConfig
from audioldm2_jax.train import config as config_lib
from audioldm2_jax.train.loop import Trainer

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


def _case_inputs(case, b=2, lq=29, lk=29, n=3, d=8):
    """Inputs and keyword arguments of the ways the models call attention."""
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
    return q, k, v, kwargs


@pytest.mark.parametrize("case", ["plain", "key_padding_mask", "bias_per_head", "bias_per_query", "causal", "cross"])
def test_per_head_attention_matches_torch_and_jax(case):
    b, lq, n, d = 2, 24, 3, 8
    q, k, v, kwargs = _case_inputs(case, b, lq, lq, n, d)
    scale = 0.25 if case == "plain" else None
    ours = per_head_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), scale=scale, **kwargs)
    assert ours.shape == (b, lq, n, d)
    assert_close(ours, _torch_attention(q, k, v, scale=scale, **kwargs), rel=1e-5, what=f"vs torch ({case})")
    assert_close(ours, jax.nn.dot_product_attention(q, k, v, scale=scale, **kwargs), rel=1e-5, what=f"vs jax ({case})")


@pytest.mark.parametrize("case", ["plain", "key_padding_mask", "bias_per_head", "bias_per_query", "causal", "cross"])
def test_query_chunked_attention_matches_torch_and_jax_at_any_block(case):
    q, k, v, kwargs = _case_inputs(case)
    expected = _torch_attention(q, k, v, **kwargs)
    for block in (1, 7, 29, 100):  # 7 does not divide the 29 queries; 100 is more than all of them
        ours = query_chunked_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), block=block, **kwargs)
        assert_close(ours, expected, rel=1e-5, what=f"vs torch ({case}, block {block})")
        assert_close(ours, jax.nn.dot_product_attention(q, k, v, **kwargs), rel=1e-5, what=f"vs jax ({case})")


@pytest.mark.parametrize("implementation", ["xla", "per_head", "cudnn"])
def test_long_sequences_take_query_blocks_in_every_implementation(implementation, monkeypatch):
    """Past QUERY_CHUNK_MIN_SCORES (lowered here to reach it with small inputs) every implementation holds one
    block of scores (``[.., block, Lk]``, no ``Lq x Lk`` array in the program) and still equals torch; below it the
    scores are whole. cuDNN's kernel takes no float32 input, so float32 falls back to the same path."""
    monkeypatch.setattr(layers, "QUERY_CHUNK_MIN_SCORES", 40 * 40)
    monkeypatch.setattr(layers, "QUERY_BLOCK_SCORES", 8 * 40)
    monkeypatch.setattr(layers, "PER_HEAD_MIN_SCORES", 1)
    q, k, v, kwargs = _case_inputs("bias_per_query", b=1, lq=40, lk=40, n=2, d=4)
    f = lambda *a: dot_product_attention(*a, **kwargs)  # noqa: E731
    with use_attention(implementation):
        program = _float32_shapes(str(jax.make_jaxpr(f)(q, k, v)))
        ours = f(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))
        small = _float32_shapes(str(jax.make_jaxpr(f)(q[:, :39], k, v)))  # 39 x 40 scores: whole
    assert not [s for s in program if s[-2:] == (40, 40)], program
    assert [s for s in program if s[-2:] == (8, 40)], program
    assert [s for s in small if s[-2:] == (39, 40)], small
    assert_close(ours, _torch_attention(q, k, v, **kwargs), rel=1e-5, what=implementation)


def _float32_shapes(jaxpr_text):
    """The shapes of the float32 values a jaxpr's equations produce."""
    import re
    return [tuple(int(x) for x in m.split(",") if x) for m in re.findall(r"f32\[([0-9,]*)\]", jaxpr_text)]


def test_fully_masked_row_is_uniform_as_in_jax():
    q, k, v = _normal(1, 4, 2, 8), _normal(1, 6, 2, 8), _normal(1, 6, 2, 8)
    mask = np.zeros((1, 1, 4, 6), bool)
    mask[..., :2, :3] = True  # rows 2 and 3 attend to nothing
    ours = per_head_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask=mask)
    assert_close(ours, jax.nn.dot_product_attention(q, k, v, mask=mask), rel=1e-5)
    assert_close(ours[0, 2:], np.broadcast_to(v[0].mean(axis=0), (2, 2, 8)), rel=1e-5)


def test_entry_point_takes_the_per_head_path_for_large_scores_when_chosen():
    """``per_head`` (the CPU's choice) runs ``lax.map`` (a scan in the jaxpr) above the threshold only, and still
    equals torch; ``xla``, the choice outside any :func:`use_attention` (e.g. FLOP counting), never does."""
    side = int(np.ceil(np.sqrt(PER_HEAD_MIN_SCORES)))
    q, k, v = _normal(1, side, 2, 4), _normal(1, side, 2, 4), _normal(1, side, 2, 4)
    trace = lambda *a: str(jax.make_jaxpr(lambda *b: dot_product_attention(*b))(*a))  # noqa: E731
    with use_attention(attention_for_platform("cpu")):
        assert "scan" in trace(q, k, v) and "scan" not in trace(q[:, :8], k[:, :8], v[:, :8])
        with use_attention("xla"):
            assert "scan" not in trace(q, k, v)
        assert "scan" in trace(q, k, v)  # restored on exit
        ours = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))
    assert_close(ours, _torch_attention(q, k, v), rel=1e-5)
    assert "scan" not in trace(q, k, v)  # no caller chose: xla


def test_the_target_platform_not_the_host_picks_the_implementation():
    """Lowering a UNet on this CPU host for a TPU (or GPU) target compiles that platform's attention: no per-head
    loop in the HLO; for a CPU target the loop is there. The host's backend plays no part."""
    assert jax.devices()[0].platform == "cpu"
    assert [attention_for_platform(p) for p in ("cpu", "gpu", "tpu", "rocm")] == ["per_head", "cudnn", "xla", "xla"]
    assert resolve_attention("auto", "tpu") == "xla" and resolve_attention("per_head", "tpu") == "per_head"
    config = UNetConfig.from_diffusers(dict(
        in_channels=4, out_channels=4, block_out_channels=[8], layers_per_block=1, norm_num_groups=4,
        down_block_types=["CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D"], cross_attention_dim=[[None]],
        attention_head_dim=2))
    model = AudioLDM2UNet(config)
    sample = jax.ShapeDtypeStruct((1, 16, 8, 4), jnp.float32)  # 128 positions: 128 x 128 scores, the threshold
    context = jax.ShapeDtypeStruct((1, 3, 8), jnp.float32)
    timesteps = jax.ShapeDtypeStruct((1,), jnp.int32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(sample.shape), jnp.zeros(1, jnp.int32),
                                               jnp.zeros(context.shape)))

    def hlo(platform):
        with use_attention(resolve_attention("auto", platform)):
            return jax.jit(model.apply).lower(params, sample, timesteps, context).as_text()

    assert "while" in hlo("cpu")
    assert "while" not in hlo("tpu") and "while" not in hlo("gpu")  # float32: cuDNN's kernel is not asked


def test_a_bad_implementation_name_names_the_valid_ones():
    with pytest.raises(ValueError, match="'flash' is not one of xla, per_head, cudnn"):
        with use_attention("flash"):
            pass
    q = jnp.zeros((1, 4, 1, 8))
    with pytest.raises(ValueError, match="'flash' is not one of xla, per_head, cudnn"):
        dot_product_attention(q, q, q, implementation="flash")
    with pytest.raises(ValueError, match="'flash' is not one of xla, per_head, cudnn"):
        resolve_attention("flash", "cpu")


def test_the_trainer_picks_attention_from_its_mesh_or_the_config(tmp_path):
    """``model.attention``: "auto" resolves for the mesh's platform (CPU here), a name is used as given, a bad one
    is a config error that lists the valid ones."""
    def config(attention="auto"):
        c = config_lib.load_config_file("configs/smoke.py")
        c.mesh.data = 1
        c.model.attention = attention
        return c

    side = int(np.ceil(np.sqrt(PER_HEAD_MIN_SCORES)))
    q = jnp.zeros((1, side, 2, 4))
    traced = lambda: str(jax.make_jaxpr(lambda x: dot_product_attention(x, x, x))(q))  # noqa: E731
    devices = jax.devices()[:1]
    auto = Trainer.build(config(), tmp_path / "a", devices=devices)
    xla = Trainer.build(config("xla"), tmp_path / "b", devices=devices)
    assert auto.attention == "per_head" and xla.attention == "xla"
    with auto.context():  # what the trainer's programs are traced under
        assert "scan" in traced()
    with xla.context():
        assert "scan" not in traced()
    with pytest.raises(config_lib.ConfigError, match=r"model.attention='flash' is not one of \('auto', 'xla', "
                                                     r"'per_head', 'cudnn'\)"):
        Trainer.build(config("flash"), tmp_path / "c", devices=devices)
