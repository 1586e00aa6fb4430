"""Exact streamed decoding of long latents (issue #19): ``vae_streaming.streamed_decode`` against the whole
``AutoencoderKL.decode`` and diffusers' decoder, on a small random-weight VAE converted from diffusers."""

import jax
import numpy as np
import pytest
import torch
from conftest import assert_close
from test_vae import _nchw, _nhwc, _reference

from audioldm2_jax import components
from audioldm2_jax.models.vae import AutoencoderKL
from audioldm2_jax.models.vae_streaming import GroupStats, streamed_decode

LENGTH = 37  # latent frames: odd, so no window below divides it


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    """The three-block VAE of tests/test_vae.py (two upsamplers, mid-block attention, 8 groups of 2-4 channels,
    randomised norms), saved by diffusers and loaded; latents ``[2, 37, 4, 8]`` and both whole decodes."""
    path = tmp_path_factory.mktemp("vae-streaming")
    ref = _reference(seed=3)
    ref.save_pretrained(path)
    config, params, _ = components.load("vae", path)
    model = AutoencoderKL(config)
    variables = {"params": params}
    z = np.random.default_rng(0).normal(size=(2, LENGTH, 4, config.latent_channels)).astype(np.float32)
    whole = np.asarray(jax.jit(lambda v, z: model.apply(v, z, method=AutoencoderKL.decode))(variables, z))
    with torch.no_grad():
        reference = _nhwc(ref.decode(_nchw(z)).sample)
    return model, variables, z, whole, reference


@pytest.mark.parametrize("window", [8, 36])
def test_streamed_decode_equals_whole_decode(vae, window):
    """Windows of 8 latent frames (5 windows, the last overlapping its neighbour) and of 36 (a clip one frame longer
    than a window) give the whole decode within 1e-5 of its scale: GroupNorm statistics and the mid-block attention
    are the whole clip's. (The windowed decoder this replaced, each window normalised and attending on its own,
    differed by 8.6e-2 of the scale on the pipeline's tiny VAE.) Also diffusers' decode within the parity
    tolerance, 1e-4."""
    model, variables, z, whole, reference = vae
    out = streamed_decode(model, variables, z, window, query_block=48)  # 48 queries: blocks do not divide 37 * 4
    err = assert_close(out, whole, rel=1e-5, what=f"streamed decode, window {window}")
    assert_close(out, reference, rel=1e-4, what="streamed decode vs diffusers")
    print(f"streamed VAE decode, window {window}: relative error {err:.1e}")


def test_group_stats_merge_equals_the_whole():
    """Chan's merge of parts equals numpy's float64 mean / population variance of the whole."""
    x = np.random.default_rng(1).normal(3.0, 2.0, size=(2, 50, 3)).astype(np.float32)
    stats = GroupStats()
    for a, b in ((0, 7), (7, 31), (31, 50)):
        part = x[:, a:b].astype(np.float64)
        stats.add(part[0].size, part.mean(axis=(1, 2)), ((part - part.mean(axis=(1, 2), keepdims=True)) ** 2
                                                                ).sum(axis=(1, 2)))
    mean, var = stats.moments()
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(var, x.astype(np.float64).var(axis=(1, 2)), rtol=1e-6)
