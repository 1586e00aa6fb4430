"""AudioMAE and LOA extraction against a PyTorch reference assembled from timm blocks with random weights.

The reference follows AudioMAE's ``models_mae.py`` (as used by AudioLDM 2): timm ``PatchEmbed`` / ``Block``, the
released checkpoints' sin-cos table, the mean of the last 3 normed blocks, ``(AvgPool2d + MaxPool2d) / 2``, and for
the local decoder timm's Swin-V2-cr block (its ``logit_scale`` saved as the release's ``tau = exp(-logit_scale)``,
its shift forced back to the release's (2, 0)). Small widths on a 16 x 8 patch grid; the waveform tests use the
real 1024 x 128 input (64 x 8 grid) at a tiny width.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_close
from timm_blocks import timm_blocks

from audioldm2_jax.convert.audiomae import load_audiomae
from audioldm2_jax.convert.weights import CheckpointError
from audioldm2_jax.models.audiomae import (AudioMAEConfig, MaskedAutoencoder, extract_features, extract_loa,
                                           loa_pooling, loa_token_count, masked_patch_loss, patchify, pool_loa,
                                           random_masking, unpatchify)

import torch

FRAMES, BINS, PATCH = 256, 128, 16  # a 16 x 8 patch grid: two Swin windows across frequency, four shifts in time
GRID = (FRAMES // PATCH, BINS // PATCH)
DIM, DEPTH, HEADS = 64, 4, 4
DEC_DIM, DEC_DEPTH, DEC_HEADS = 32, 2, 4
AUDIOLDM2_PREFIX = "cond_stage_models.0.cond_stage_models.2.audiomae.model."


# ----------------------------------------------------------------------------------------------------------------
# The PyTorch reference
# ----------------------------------------------------------------------------------------------------------------


def release_sincos_table(dim: int, frames_patches: int, bin_patches: int) -> np.ndarray:
    """The released AudioMAE table: built on a (bins, frames) = (rows, cols) patch grid, row-major, the first half
    of the channels from the column coordinate; a zero row for CLS in front."""
    def one_axis(d, pos):
        freqs = np.power(10000.0, -np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        ang = np.outer(pos.astype(np.float64), freqs)
        return np.concatenate([np.sin(ang), np.cos(ang)], axis=1)

    cols, rows = np.meshgrid(np.arange(frames_patches), np.arange(bin_patches))  # shapes (rows, cols)
    table = np.concatenate([one_axis(dim // 2, cols.ravel()), one_axis(dim // 2, rows.ravel())], axis=1)
    return np.concatenate([np.zeros((1, dim)), table])[None].astype(np.float32)


class TorchAudioMAE(torch.nn.Module):
    def __init__(self, local_decoder: bool):
        super().__init__()
        PatchEmbed, Block, SwinBlock = timm_blocks()
        norm = partial(torch.nn.LayerNorm, eps=1e-6)
        self.local = local_decoder
        self.patch_embed = PatchEmbed(img_size=(FRAMES, BINS), patch_size=PATCH, in_chans=1, embed_dim=DIM)
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, DIM))
        self.pos_embed = torch.nn.Parameter(torch.from_numpy(release_sincos_table(DIM, *GRID)), requires_grad=False)
        self.blocks = torch.nn.ModuleList(
            [Block(DIM, HEADS, 4.0, qkv_bias=True, norm_layer=norm) for _ in range(DEPTH)])
        self.norm = norm(DIM)
        self.decoder_embed = torch.nn.Linear(DIM, DEC_DIM)
        self.mask_token = torch.nn.Parameter(torch.zeros(1, 1, DEC_DIM))
        self.decoder_pos_embed = torch.nn.Parameter(torch.from_numpy(release_sincos_table(DEC_DIM, *GRID)),
                                                    requires_grad=False)
        if local_decoder:
            blocks = []
            for i in range(DEC_DEPTH):
                blk = SwinBlock(DEC_DIM, DEC_HEADS, feat_size=GRID, window_size=(4, 4),
                                shift_size=(0, 0) if i % 2 == 0 else (2, 0), norm_layer=norm)
                if i % 2:  # timm re-derives the shift as half a window on both axes; the release shifts time only
                    blk.shift_size = (2, 0)
                    blk.attn_mask = blk.get_attn_mask(device=torch.device("cpu"), dtype=torch.float32)
                blocks.append(blk)
            self.decoder_blocks = torch.nn.ModuleList(blocks)
        else:
            self.decoder_blocks = torch.nn.ModuleList(
                [Block(DEC_DIM, DEC_HEADS, 4.0, qkv_bias=True, norm_layer=norm) for _ in range(DEC_DEPTH)])
        self.decoder_norm = norm(DEC_DIM)
        self.decoder_pred = torch.nn.Linear(DEC_DIM, PATCH * PATCH)

    def _tokens(self, spec):
        return self.patch_embed(spec[:, None]) + self.pos_embed[:, 1:]

    def _with_cls(self, x):
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1)

    def features(self, spec, contextual_depth):
        x = self._with_cls(self._tokens(spec))
        kept = []
        for n, blk in enumerate(self.blocks):
            x = blk(x)
            if n > contextual_depth:
                kept.append(self.norm(x))
        return torch.stack(kept).mean(0)

    @staticmethod
    def pool(rep, lt, lf):
        grid = rep[:, 1:].transpose(1, 2).reshape(rep.shape[0], rep.shape[-1], *GRID)
        pooled = (torch.nn.AvgPool2d((lt, lf), (lt, lf))(grid) + torch.nn.MaxPool2d((lt, lf), (lt, lf))(grid)) / 2
        return pooled.flatten(2).transpose(1, 2)

    def forward(self, spec, noise, mask_ratio):
        x = self._tokens(spec)
        b, length, d = x.shape
        keep = int(length * (1 - mask_ratio))
        order = torch.argsort(noise, dim=1)
        restore = torch.argsort(order, dim=1)
        x = torch.gather(x, 1, order[:, :keep, None].expand(-1, -1, d))
        mask = torch.ones(b, length)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, restore)
        x = self._with_cls(x)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_embed(self.norm(x))
        fill = self.mask_token.repeat(b, length + 1 - x.shape[1], 1)
        rest = torch.gather(torch.cat([x[:, 1:], fill], 1), 1, restore[:, :, None].expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], rest], 1) + self.decoder_pos_embed
        if self.local:
            x = x[:, 1:]
            for blk in self.decoder_blocks:
                x = blk(x.reshape(b, *GRID, -1)).reshape(b, length, -1)
        else:
            for blk in self.decoder_blocks:
                x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))
        pred = pred if self.local else pred[:, 1:]
        target = spec.reshape(b, GRID[0], PATCH, GRID[1], PATCH).permute(0, 1, 3, 2, 4).reshape(b, length, -1)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        loss = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
        return loss, pred, mask


def randomise(model: torch.nn.Module, seed: int):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("pos_embed"):
                continue
            if name.endswith("logit_scale"):  # tau in [0.3, 1]
                p.copy_(-torch.log(0.3 + 0.7 * torch.rand(p.shape, generator=gen)))
            elif p.ndim == 1 and ("norm" in name):
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel() if p.ndim > 1 else p.shape[0]
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
    return model.eval()


def audiomae_layout(model: TorchAudioMAE) -> dict:
    """The release's key layout: timm's ``logit_scale`` stored as ``tau``."""
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith("logit_scale"):
            out[k[: -len("logit_scale")] + "tau"] = torch.exp(-v)
        else:
            out[k] = v.clone()
    return out


@pytest.fixture(scope="module")
def fbanks():
    rng = np.random.default_rng(0)
    return rng.standard_normal((2, FRAMES, BINS)).astype(np.float32)


@pytest.fixture(scope="module")
def global_ref(tmp_path_factory):
    torch.manual_seed(0)
    model = randomise(TorchAudioMAE(local_decoder=False), 1)
    path = tmp_path_factory.mktemp("audiomae") / "pretrained.pth"
    torch.save({"model": audiomae_layout(model), "epoch": 3}, path)
    return model, path


OVERRIDES = dict(num_heads=HEADS, decoder_num_heads=DEC_HEADS)


# ----------------------------------------------------------------------------------------------------------------
# Parity
# ----------------------------------------------------------------------------------------------------------------


def test_features_and_loa_match_reference(global_ref, fbanks, tmp_path):
    model, path = global_ref
    config, params = load_audiomae(path, **OVERRIDES)
    assert config.grid == GRID and config.pos_embed_layout == "audiomae" and config.feature_layers == 3
    assert config.decoder_type == "global" and "decoder" in params

    with torch.no_grad():
        ref_features = model.features(torch.from_numpy(fbanks), contextual_depth=DEPTH - 4).numpy()
    features = extract_features(params, fbanks, config=config)
    err = assert_close(features, ref_features, what="features")
    assert float(np.abs(np.asarray(features) - ref_features).max()) <= 1e-4, err

    for lam in (1, 2, 4, 8, (2, 1)):
        lt, lf = loa_pooling(lam, GRID)
        with torch.no_grad():
            ref_loa = model.pool(torch.from_numpy(ref_features), lt, lf).numpy()
        loa = pool_loa(features, lam, GRID)
        assert loa.shape == (2, loa_token_count(lam, GRID), DIM)
        assert float(np.abs(np.asarray(loa) - ref_loa).max()) <= 1e-4, f"LOA lambda={lam}"
    # The jitted end-to-end entry point, with the full {"encoder", "decoder"} tree.
    with torch.no_grad():
        ref_loa = model.pool(torch.from_numpy(ref_features), 4, 4).numpy()
    assert_close(extract_loa(params, fbanks, 4, config=config), ref_loa, what="extract_loa")

    # The same weights inside an AudioLDM 2 checkpoint: found by key, decoder left out on request.
    sd = {AUDIOLDM2_PREFIX + k: v for k, v in audiomae_layout(model).items()}
    sd["model.diffusion_model.time_embed.0.weight"] = torch.zeros(4, 4)
    sd["cond_stage_models.0.cond_stage_models.1.model.shared.weight"] = torch.zeros(3, 4)
    ldm_path = tmp_path / "audioldm2.pth"
    torch.save({"state_dict": sd, "global_step": 10}, ldm_path)
    config2, params2 = load_audiomae(ldm_path, with_decoder=False, **OVERRIDES)
    assert set(params2) == {"encoder"} and config2 == config
    jax.tree.map(np.testing.assert_array_equal, params2["encoder"], params["encoder"])
    # A second, identical copy (the GPT-2 conditioner's) is fine; a different one needs prefix=.
    copy = {k.replace("cond_stage_models.2.", "cond_stage_models.3."): v for k, v in sd.items() if "audiomae" in k}
    _, params3 = load_audiomae({"state_dict": {**sd, **copy}}, with_decoder=False, **OVERRIDES)
    jax.tree.map(np.testing.assert_array_equal, params3["encoder"], params["encoder"])
    copy = {k: v + 1 if k.endswith("norm.bias") else v for k, v in copy.items()}
    with pytest.raises(CheckpointError, match="several different AudioMAEs"):
        load_audiomae({"state_dict": {**sd, **copy}}, **OVERRIDES)
    _, params4 = load_audiomae({"state_dict": {**sd, **copy}}, prefix=AUDIOLDM2_PREFIX, with_decoder=False,
                               **OVERRIDES)
    jax.tree.map(np.testing.assert_array_equal, params4["encoder"], params["encoder"])


@pytest.mark.parametrize("local", [False, True], ids=["global", "local"])
def test_masked_pretraining_forward_matches_reference(global_ref, fbanks, tmp_path, local):
    if local:
        torch.manual_seed(1)
        model = randomise(TorchAudioMAE(local_decoder=True), 2)
        path = tmp_path / "local.pth"
        torch.save({"model": audiomae_layout(model)}, path)
    else:
        model, path = global_ref
    config, params = load_audiomae(path, **OVERRIDES)
    assert config.decoder_type == ("local" if local else "global")
    noise = np.random.default_rng(3).random((2, GRID[0] * GRID[1])).astype(np.float32)
    with torch.no_grad():
        ref_loss, ref_pred, ref_mask = model(torch.from_numpy(fbanks), torch.from_numpy(noise), 0.75)
    mae = MaskedAutoencoder(dataclasses.replace(config, mask_ratio=0.75))
    out = jax.jit(lambda p, x, n: mae.apply({"params": p}, x, n))(params, fbanks, noise)
    np.testing.assert_array_equal(np.asarray(out["mask"]), ref_mask.numpy())
    assert_close(out["pred"], ref_pred.numpy(), what="pred")
    assert_close(out["loss"], ref_loss.numpy(), what="loss")


# ----------------------------------------------------------------------------------------------------------------
# Pieces
# ----------------------------------------------------------------------------------------------------------------


def test_random_masking_keeps_the_lowest_noise_and_restores_order():
    x = jnp.arange(2 * 12 * 3, dtype=jnp.float32).reshape(2, 12, 3)
    noise = jax.random.uniform(jax.random.key(0), (2, 12))
    kept, mask, restore = jax.jit(partial(random_masking, mask_ratio=0.75))(x, noise=noise)
    assert kept.shape == (2, 3, 3) and mask.shape == (2, 12)
    assert np.asarray(mask.sum(1)).tolist() == [9.0, 9.0]
    for b in range(2):
        lowest = np.argsort(np.asarray(noise[b]))[:3]
        np.testing.assert_array_equal(np.asarray(kept[b]), np.asarray(x[b])[lowest])
        assert set(np.flatnonzero(np.asarray(mask[b]) == 0)) == set(lowest)
        assert sorted(np.asarray(restore[b]).tolist()) == list(range(12))


def test_patchify_round_trip_and_loss_only_counts_hidden_patches():
    spec = np.random.default_rng(1).standard_normal((2, 64, 32)).astype(np.float32)
    patches = np.asarray(patchify(spec, 16))
    assert patches.shape == (2, 8, 256)
    np.testing.assert_array_equal(patches[0, 1], spec[0, :16, 16:32].reshape(-1))  # time-major patch order
    np.testing.assert_array_equal(np.asarray(unpatchify(patches, (4, 2), 16)), spec)
    target = (patches - patches.mean(-1, keepdims=True)) / np.sqrt(patches.var(-1, ddof=1, keepdims=True) + 1e-6)
    mask = np.zeros((2, 8), np.float32)
    mask[:, :3] = 1.0
    loss = jax.jit(partial(masked_patch_loss, patch_size=16))
    wrong_where_visible = target + 5.0 * (1 - mask)[..., None]
    assert float(loss(spec, wrong_where_visible, mask)) < 1e-10
    wrong_where_hidden = target + 2.0 * mask[..., None]
    assert abs(float(loss(spec, wrong_where_hidden, mask)) - 4.0) < 1e-5


# ----------------------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------------------


def test_lambda_that_does_not_divide_the_grid_lists_valid_values():
    with pytest.raises(ValueError, match=r"valid lambda_t: \[1, 2, 4, 8, 16, 32, 64\]"):
        loa_pooling(3)
    with pytest.raises(ValueError, match="valid lambda_f"):
        loa_pooling((2, 3))
    assert loa_pooling(16) == (16, 8) and loa_token_count(1) == 512 and loa_token_count(8) == 8
    with pytest.raises(ValueError, match="does not divide"):
        extract_loa({}, np.zeros((1, 1024, 128), np.float32), 5)


def random_params(shapes, seed: int = 0):
    """Random weights for a parameter-shape tree without compiling an init: unit LayerNorm scales, small rest."""
    rng = np.random.default_rng(seed)

    def leaf(path, x):
        name = jax.tree_util.keystr(path)
        if name.endswith("['scale']"):
            return np.ones(x.shape, np.float32)
        return (0.05 * rng.standard_normal(x.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


@pytest.fixture(scope="module")
def full_grid_encoder():
    """Real input size (1024 x 128 -> 64 x 8), tiny width: the waveform path at low cost."""
    import flax.linen as nn

    from audioldm2_jax.models.audiomae import init_encoder

    config = AudioMAEConfig(embed_dim=32, depth=3, num_heads=2)
    shapes = nn.unbox(jax.eval_shape(partial(init_encoder, config=config), jax.random.key(0)))
    return config, random_params(shapes)


def test_waveform_path_handles_silent_constant_and_short_clips(full_grid_encoder):
    config, params = full_grid_encoder
    clips = np.stack([np.zeros(16000), np.full(16000, 0.5), 0.1 * np.sin(np.arange(16000) * 0.05)]).astype(np.float32)
    loa = extract_loa(params, clips, 8, config=config)
    assert loa.shape == (3, 8, 32) and np.isfinite(np.asarray(loa)).all()
    # The waveform path is the fbank front end followed by the fbank path.
    from audioldm2_jax.audio.fbank import audiomae_input

    fb = np.stack([audiomae_input(c) for c in clips])
    assert_close(extract_loa(params, fb, 8, config=config), loa, rel=1e-4, what="waveform vs fbank path")
    constant_fbanks = np.stack([np.full((1024, 128), v, np.float32) for v in (3.0, -1.0, 0.0)])
    assert np.isfinite(np.asarray(extract_loa(params, constant_fbanks, 8, config=config))).all()
    # Shorter than one 25 ms window: zero-padded to one window, not an error.
    short = extract_loa(params, np.zeros(100, np.float32), 8, config=config, sample_rate=16000)
    assert short.shape == (1, 8, 32) and np.isfinite(np.asarray(short)).all()


def test_wrong_sample_rate_and_shapes_raise(full_grid_encoder):
    config, params = full_grid_encoder
    with pytest.raises(ValueError, match="16000"):
        extract_loa(params, np.zeros((1, 44100), np.float32), 8, config=config, sample_rate=44100)
    with pytest.raises(ValueError, match="expected fbanks"):
        extract_loa(params, np.zeros((1, 2, 3, 4), np.float32), 8, config=config)


def test_checkpoint_errors_name_the_key(global_ref, tmp_path):
    model, _ = global_ref
    sd = audiomae_layout(model)
    del sd["blocks.1.mlp.fc2.bias"]
    sd["blocks.0.attn.qkv.weight"] = sd["blocks.0.attn.qkv.weight"][:-1]
    path = tmp_path / "broken.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError) as err:
        load_audiomae(path, **OVERRIDES)
    text = str(err.value)
    assert "broken.pth" in text and "blocks_1/mlp/fc2/bias" in text and "blocks.0.attn.qkv.weight" in text
    sd = audiomae_layout(model)
    sd["pos_embed"] = sd["pos_embed"] * 2
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError, match="pos_embed is not a fixed 2-D sin-cos table"):
        load_audiomae(path, **OVERRIDES)
    with pytest.raises(CheckpointError, match="no AudioMAE weights"):
        load_audiomae({"state_dict": {"a.weight": np.zeros(3, np.float32)}})


def test_config_from_reference_kwargs():
    c = AudioMAEConfig.from_dict(dict(img_size=(1024, 128), patch_size=16, in_chans=1, embed_dim=768, depth=12,
                                      num_heads=12, decoder_embed_dim=512, decoder_num_heads=16, mlp_ratio=4,
                                      audio_exp=True, decoder_mode=1, contextual_depth=8, norm_pix_loss=True))
    assert c.decoder_type == "local" and c.decoder_depth == 16 and c.feature_layers == 3 and c.grid == (64, 8)
    assert c.window_and_shift(0) == ((4, 4), (0, 0)) and c.window_and_shift(1) == ((4, 4), (2, 0))
    with pytest.raises(ValueError, match="'spam'"):
        AudioMAEConfig.from_dict({"spam": 1})
    with pytest.raises(ValueError, match="num_heads"):
        AudioMAEConfig(num_heads=7)
