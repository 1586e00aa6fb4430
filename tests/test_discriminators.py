"""Discriminators against PyTorch references written here from the published architectures, random weights.

- PatchGAN: taming-transformers' ``NLayerDiscriminator`` (conv 4x4 stride 2, LeakyReLU 0.2, widths doubling up
  to 8x, a stride-1 block, a 1-channel conv), with ``nn.GroupNorm`` (or nothing) where the original has
  BatchNorm, as our module does.
- HiFi-GAN (Kong et al. 2020, the jik876 code's layout): ``DiscriminatorP`` (reflect pad to a multiple of the
  period, view ``[B, 1, N/p, p]``, (5, 1) convs stride (3, 1), post conv (3, 1)), ``DiscriminatorS`` (grouped
  1-D convs, post conv 3) under ``torch.nn.utils.parametrizations.weight_norm`` and, on the first scale,
  ``torch.nn.utils.spectral_norm`` (eval mode), ``AvgPool1d(4, 2, padding=2)`` between scales.

Weights go through ``convert_torch_discriminator``; small widths keep the jit compilations short.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_close

from audioldm2_jax.convert.discriminators import convert_torch_discriminator
from audioldm2_jax.convert.weights import CheckpointError
from audioldm2_jax.models.discriminators import (HifiGanDiscriminatorConfig, MultiPeriodDiscriminator,
                                                 MultiScaleDiscriminator, PatchGANConfig, PatchGANDiscriminator,
                                                 patchgan_receptive_field)

import torch
tnn = torch.nn

MPD_CONFIG = HifiGanDiscriminatorConfig(period_channels=(4, 8, 16, 32, 32))
MSD_CONFIG = HifiGanDiscriminatorConfig(scale_channels=(16, 16, 32, 32, 32, 32, 32))


# ----------------------------------------------------------------------------------------------------------------
# PyTorch references
# ----------------------------------------------------------------------------------------------------------------


class TorchPatchGAN(tnn.Module):
    def __init__(self, in_channels, ndf, n_layers, norm_groups=None):
        super().__init__()
        layers = [tnn.Conv2d(in_channels, ndf, 4, 2, 1), tnn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            layers += [tnn.Conv2d(ndf * prev, ndf * mult, 4, 2 if n < n_layers else 1, 1, bias=norm_groups is None),
                       tnn.GroupNorm(norm_groups, ndf * mult) if norm_groups else tnn.Identity(), tnn.LeakyReLU(0.2)]
        layers.append(tnn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.main = tnn.Sequential(*layers)

    def forward(self, x):
        return self.main(x)


def _weight_norm(module):
    module = tnn.utils.parametrizations.weight_norm(module)
    with torch.no_grad():  # move g away from ||v|| so that both parameters matter
        g = module.parametrizations.weight.original0
        g.mul_(torch.empty_like(g).uniform_(0.5, 1.5))
    return module


def _conv_stack(disc, x):
    """HiFi-GAN's discriminator body: ``disc.convs`` each followed by LeakyReLU(0.1), then ``disc.conv_post``.
    Returns ``(logits flattened to [B, -1], feature maps after every conv)``."""
    fmaps = []
    for layer in disc.convs:
        x = tnn.functional.leaky_relu(layer(x), 0.1)
        fmaps.append(x)
    x = disc.conv_post(x)
    fmaps.append(x)
    return torch.flatten(x, 1, -1), fmaps


class TorchPeriodDisc(tnn.Module):
    def __init__(self, period, cfg: HifiGanDiscriminatorConfig):
        super().__init__()
        self.period = period
        k, chans = cfg.period_kernel_size, (1,) + cfg.period_channels
        last = len(cfg.period_channels) - 1
        self.convs = tnn.ModuleList(
            _weight_norm(tnn.Conv2d(chans[i], chans[i + 1], (k, 1), (cfg.period_stride if i < last else 1, 1),
                                    padding=(k // 2, 0))) for i in range(len(cfg.period_channels)))
        self.conv_post = _weight_norm(tnn.Conv2d(chans[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, x):  # [B, 1, N]
        b, c, n = x.shape
        if n % self.period:
            x = tnn.functional.pad(x, (0, self.period - n % self.period), "reflect")
        x = x.view(b, c, -1, self.period)
        return _conv_stack(self, x)


class TorchMPD(tnn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.discriminators = tnn.ModuleList(TorchPeriodDisc(p, cfg) for p in cfg.periods)

    def forward(self, y):
        outs = [d(y) for d in self.discriminators]
        return [o[0] for o in outs], [o[1] for o in outs]


class TorchScaleDisc(tnn.Module):
    def __init__(self, cfg: HifiGanDiscriminatorConfig, spectral: bool):
        super().__init__()
        norm = tnn.utils.spectral_norm if spectral else _weight_norm
        chans = (1,) + cfg.scale_channels
        self.convs = tnn.ModuleList(
            norm(tnn.Conv1d(chans[i], chans[i + 1], k, s, groups=g, padding=k // 2))
            for i, (k, s, g) in enumerate(zip(cfg.scale_kernel_sizes, cfg.scale_strides, cfg.scale_groups)))
        self.conv_post = norm(tnn.Conv1d(chans[-1], 1, 3, 1, padding=1))

    def forward(self, x):
        return _conv_stack(self, x)


class TorchMSD(tnn.Module):
    def __init__(self, cfg, spectral_first=True):
        super().__init__()
        self.discriminators = tnn.ModuleList(TorchScaleDisc(cfg, spectral=spectral_first and i == 0)
                                             for i in range(cfg.num_scales))
        self.meanpools = tnn.ModuleList(tnn.AvgPool1d(4, 2, padding=2) for _ in range(cfg.num_scales - 1))

    def forward(self, y):
        logits, fmaps = [], []
        for i, d in enumerate(self.discriminators):
            if i:
                y = self.meanpools[i - 1](y)
            out, fm = d(y)
            logits.append(out)
            fmaps.append(fm)
        return logits, fmaps


def _expected(model, x):
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]


def _state_dict(module):
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def _channels_last(t):
    a = t.detach().numpy()
    return np.moveaxis(a, 1, -1)


# ----------------------------------------------------------------------------------------------------------------
# PatchGAN
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["group", "none"])
def test_patchgan_matches_torch(norm):
    cfg = PatchGANConfig(base_channels=8, num_layers=3, norm=norm, norm_groups=4)
    ref = TorchPatchGAN(1, 8, 3, norm_groups=4 if norm == "group" else None).eval()
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, tnn.GroupNorm):  # non-trivial affine parameters
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.3)
    x = np.random.default_rng(0).standard_normal((2, 48, 64, 1)).astype(np.float32)
    model = PatchGANDiscriminator(cfg)
    params = convert_torch_discriminator(_state_dict(ref), _expected(model, x), source="patchgan")
    ours = jax.jit(model.apply)({"params": params}, x)
    with torch.no_grad():
        want = _channels_last(ref(torch.from_numpy(np.moveaxis(x, -1, 1))))
    assert ours.shape == (2, cfg.output_size(48), cfg.output_size(64), 1) == want.shape
    assert ours.dtype == jnp.float32
    err = assert_close(ours, want, what=f"patchgan ({norm}) logits")
    print(f"patchgan {norm}: rel err {err:.2e}")


def test_patchgan_receptive_field():
    """Without normalisation each logit sees exactly the window the conv arithmetic gives (70 x 70 for 3 layers;
    GroupNorm, like the original's BatchNorm, makes every logit depend on the whole input through statistics)."""
    cfg = PatchGANConfig(base_channels=4, num_layers=3, norm="none")
    assert patchgan_receptive_field(cfg) == 70
    x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 96, 64, 1)), jnp.float32)
    model = PatchGANDiscriminator(cfg)
    # random weights through the converter (cheaper than compiling init)
    params = {"params": convert_torch_discriminator(_state_dict(TorchPatchGAN(1, 4, 3)), _expected(model, x))}
    i, j = 5, 1
    grad = jax.jit(jax.grad(lambda x: model.apply(params, x)[0, i, j, 0]))(x)
    support = np.abs(np.asarray(grad[0, :, :, 0])) > 0

    def window(o, size):  # back through (k=4, p=1) convs with strides 2, 2, 2, 1, 1, last layer first
        lo, hi = o, o
        for s in (1, 1, 2, 2, 2):
            lo, hi = lo * s - 1, hi * s - 1 + 3
        return max(lo, 0), min(hi, size - 1)

    (t0, t1), (f0, f1) = window(i, 96), window(j, 64)
    assert t1 - t0 + 1 == 70  # unclipped along time
    want = np.zeros_like(support)
    want[t0:t1 + 1, f0:f1 + 1] = True
    np.testing.assert_array_equal(support, want)


def test_patchgan_config():
    cfg = PatchGANConfig.from_loss_config({"disc_start": 50001, "kl_weight": 1000.0, "disc_weight": 0.5,
                                           "disc_in_channels": 1, "disc_num_layers": 2})
    assert (cfg.in_channels, cfg.num_layers, cfg.base_channels) == (1, 2, 64)
    assert cfg.hidden_channels == (64, 128, 256)
    assert PatchGANConfig().output_size(1024) == 126 and PatchGANConfig().output_size(64) == 6
    with pytest.raises(ValueError, match="disc_typo"):
        PatchGANConfig.from_loss_config({"disc_typo": 3})
    with pytest.raises(ValueError, match="norm_groups"):
        PatchGANConfig(base_channels=6, norm_groups=8)
    with pytest.raises(ValueError, match="norm="):
        PatchGANConfig(norm="batch")


def test_batchnorm_checkpoint_is_rejected():
    """A BatchNorm NLayerDiscriminator's running statistics have no place in the GroupNorm model: named in the error."""
    ref = TorchPatchGAN(1, 8, 2, norm_groups=None)
    sd = _state_dict(ref)
    sd["main.3.running_mean"] = np.zeros(16, np.float32)
    model = PatchGANDiscriminator(PatchGANConfig(base_channels=8, num_layers=2, norm_groups=4))
    with pytest.raises(CheckpointError, match="running_mean"):
        convert_torch_discriminator(sd, _expected(model, np.zeros((1, 32, 32, 1), np.float32)), source="ckpt")


# ----------------------------------------------------------------------------------------------------------------
# HiFi-GAN
# ----------------------------------------------------------------------------------------------------------------


def _compare_outputs(ours, want, what):
    (logits, fmaps), (want_logits, want_fmaps) = ours, want
    assert len(logits) == len(want_logits) and len(fmaps) == len(want_fmaps)
    worst = 0.0
    for k, (o, w) in enumerate(zip(logits, want_logits)):
        worst = max(worst, assert_close(o, w.detach().numpy(), what=f"{what} logits {k}"))
        assert len(fmaps[k]) == len(want_fmaps[k])
        for layer, (fo, fw) in enumerate(zip(fmaps[k], want_fmaps[k])):
            worst = max(worst, assert_close(fo, _channels_last(fw), what=f"{what} {k} feature map {layer}"))
    return worst


def test_multi_period_discriminator_matches_torch():
    ref = TorchMPD(MPD_CONFIG).eval()
    n = 200  # not a multiple of 3, 7 or 11: exercises the reflect padding
    wave = np.random.default_rng(2).uniform(-1, 1, (2, n)).astype(np.float32)
    model = MultiPeriodDiscriminator(MPD_CONFIG)
    params = convert_torch_discriminator(_state_dict(ref), _expected(model, wave), source="mpd")
    ours = jax.jit(model.apply)({"params": params}, wave)
    with torch.no_grad():
        want = ref(torch.from_numpy(wave)[:, None])
    for p, logits, fmaps in zip(MPD_CONFIG.periods, *ours):
        rows = -(-n // p)
        assert fmaps[0].shape == (2, -(-rows // 3), p, 4)  # first conv: stride 3 along the folded time axis
        assert logits.shape == (2, fmaps[-1].shape[1] * p)
    err = _compare_outputs(ours, want, "mpd")
    print(f"mpd: worst rel err {err:.2e}")


def test_period_discriminator_sees_one_phase():
    """Column ``c`` of period ``p``'s logits depends only on samples at phase ``c`` (mod p) of the reflect-padded
    waveform: kernels are (k, 1), so periods never mix."""
    n = 100
    cfg = HifiGanDiscriminatorConfig(period_channels=(2, 4, 4))  # the structure does not depend on the widths
    model = MultiPeriodDiscriminator(cfg)
    wave = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (1, n)), jnp.float32)
    params = {"params": convert_torch_discriminator(_state_dict(TorchMPD(cfg)), _expected(model, wave))}

    def last_column_sums(w):
        logits, _ = model.apply(params, w)
        return jnp.stack([l.reshape(1, -1, p)[:, :, p - 1].sum() for l, p in zip(logits, cfg.periods)])

    jac = np.asarray(jax.jit(jax.jacrev(last_column_sums))(wave))[:, 0]  # [periods, n]
    for k, p in enumerate(cfg.periods):
        padded = np.arange(p - 1, -(-n // p) * p, p)
        source = np.where(padded < n, padded, 2 * (n - 1) - padded)  # reflection without repeating the edge
        want = np.zeros(n, bool)
        want[source] = True
        np.testing.assert_array_equal(np.abs(jac[k]) > 0, want, err_msg=f"period {p}")


def test_multi_scale_discriminator_matches_torch():
    ref = TorchMSD(MSD_CONFIG).eval()  # eval: spectral norm uses its stored u, v (no power iteration)
    wave = np.random.default_rng(4).uniform(-1, 1, (2, 256)).astype(np.float32)
    with torch.no_grad():  # u, v near the top singular pair (as after training), but not exactly on it
        for m in ref.discriminators[0].modules():
            if hasattr(m, "weight_orig"):
                u, _, vt = torch.linalg.svd(m.weight_orig.reshape(m.weight_orig.shape[0], -1))
                for buf, vec in ((m.weight_u, u[:, 0]), (m.weight_v, vt[0])):
                    vec = vec + 0.1 * torch.randn_like(vec) / vec.numel() ** 0.5
                    buf.copy_(vec / vec.norm())
    model = MultiScaleDiscriminator(MSD_CONFIG)
    sd = _state_dict(ref)
    assert any(k.endswith("weight_orig") for k in sd) and any("original0" in k for k in sd)
    params = convert_torch_discriminator(sd, _expected(model, wave), source="msd")
    ours = jax.jit(model.apply)({"params": params}, wave)
    with torch.no_grad():
        want = ref(torch.from_numpy(wave)[:, None])
    lengths = [256, 129, 65]  # AvgPool1d(4, 2, padding=2): n -> n // 2 + 1
    for logits, fmaps, n in zip(*ours, lengths):
        assert fmaps[0].shape == (2, n, 16)
        assert logits.shape == (2, -(-n // 64))  # strides 2, 2, 4, 4
    err = _compare_outputs(ours, want, "msd")
    print(f"msd: worst rel err {err:.2e}")


def test_weight_norm_parameters():
    """Initialisation gives g = ||v|| (the kernel starts as v); converting into a model without weight norm folds
    torch's g * v / ||v|| into the kernel, equal to the weight torch computes."""
    wave = np.zeros((1, 64), np.float32)
    cfg = HifiGanDiscriminatorConfig(periods=(2,), period_channels=(4, 8))
    params = jax.jit(MultiPeriodDiscriminator(cfg).init)(jax.random.PRNGKey(2), wave)["params"]
    conv = params["discriminators_0"]["convs_1"]
    v, g = np.asarray(conv["kernel_v"].unbox()), np.asarray(conv["kernel_g"].unbox())
    np.testing.assert_allclose(g, np.sqrt((v ** 2).sum(axis=(0, 1, 2))), rtol=1e-6)
    assert conv["kernel_g"].names == ("conv_out",) and conv["kernel_v"].names[-2:] == ("conv_in", "conv_out")

    ref = TorchPeriodDisc(2, cfg)
    plain = HifiGanDiscriminatorConfig(periods=(2,), period_channels=(4, 8), weight_norm=False)
    sd = {f"discriminators.0.{k}": v for k, v in _state_dict(ref).items()}
    folded = convert_torch_discriminator(sd, _expected(MultiPeriodDiscriminator(plain), wave))
    want = ref.convs[1].weight.detach().numpy()  # [out, in, k, 1], computed by the parametrisation
    assert_close(folded["discriminators_0"]["convs_1"]["kernel"], np.transpose(want, (2, 3, 1, 0)),
                 rel=1e-6, what="folded weight-norm kernel")

    # the pre-parametrisation API's names (weight_g / weight_v, as in HiFi-GAN's released checkpoints)
    old_api = {k.replace("parametrizations.weight.original0", "weight_g")
               .replace("parametrizations.weight.original1", "weight_v"): v for k, v in sd.items()}
    assert any(k.endswith("weight_g") for k in old_api)
    expected = _expected(MultiPeriodDiscriminator(cfg), wave)
    for a, b in zip(jax.tree_util.tree_leaves(convert_torch_discriminator(old_api, expected)),
                    jax.tree_util.tree_leaves(convert_torch_discriminator(sd, expected))):
        np.testing.assert_array_equal(a, b)


def test_hifigan_config():
    assert HifiGanDiscriminatorConfig.from_dict({"periods": [2, 3]}).periods == (2, 3)
    with pytest.raises(ValueError, match="periodz"):
        HifiGanDiscriminatorConfig.from_dict({"periodz": [2]})
    with pytest.raises(ValueError, match="scale_groups"):
        HifiGanDiscriminatorConfig(scale_channels=(16, 8, 32, 32, 32, 32, 32))
    with pytest.raises(ValueError, match="scale_strides"):
        HifiGanDiscriminatorConfig(scale_strides=(1, 2))


def test_sharded_matches_single_device():
    """On a data x fsdp x tensor mesh (kernels split by their logical names, grouped convs included, the batch
    split over data x fsdp) the scale discriminator computes what it computes on one device."""
    import flax.linen as nn

    from audioldm2_jax.parallel.partitioning import DEFAULT_RULES, logical_to_shardings, make_mesh, place

    cfg = HifiGanDiscriminatorConfig(num_scales=2, scale_channels=(16, 16, 32), scale_kernel_sizes=(15, 41, 41),
                                     scale_strides=(1, 2, 2), scale_groups=(1, 4, 16))
    model = MultiScaleDiscriminator(cfg)
    wave = jnp.asarray(np.random.default_rng(5).uniform(-1, 1, (4, 128)), jnp.float32)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), wave)
    host = {"params": convert_torch_discriminator(_state_dict(TorchMSD(cfg, spectral_first=False)), abstract)}
    params = place(host, logical_to_shardings(abstract, mesh, DEFAULT_RULES))
    kernel = params["params"]["discriminators_0"]["convs_2"]["kernel_v"]
    assert len(kernel.sharding.device_set) == 8 and not kernel.sharding.is_fully_replicated
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        sharded = jax.jit(model.apply)(params, wave)
    single = jax.jit(model.apply)(host, wave)
    for (a, b) in zip(jax.tree_util.tree_leaves(sharded), jax.tree_util.tree_leaves(single)):
        assert_close(a, b, rel=1e-5, what="sharded vs single device")
