"""The full-size training configs (configs/audioldm2_{base,large,music}.py, configs/scaling.py) and the model-size
helpers of configs/sizes.py.

Nothing full-size is compiled: configs are validated and their model dataclasses built; parameter counts come from
``jax.eval_shape`` and are checked against the published numbers and against diffusers' PyTorch UNet built on the
meta device (no memory) and counted with ``sum(p.numel())``; the FLOPs of a small preset are checked against
PyTorch's FLOP counter on the same model.
"""

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor
from diffusers.pipelines.audioldm2.modeling_audioldm2 import AudioLDM2UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audioldm2_jax.models.audiomae import loa_token_count  # noqa: E402
from audioldm2_jax.models.unet import UNetConfig, context_dims  # noqa: E402
from audioldm2_jax.train import config as config_lib  # noqa: E402
from audioldm2_jax.train.stages import stage_class  # noqa: E402
from configs import common, sizes  # noqa: E402

CONFIG_FILES = ("audioldm2_base", "audioldm2_large", "audioldm2_music", "scaling")
PUBLISHED_UNET = json.loads((ROOT / "configs/published/audioldm2-base/unet.json").read_text())


def load(name: str, arg: str):
    return config_lib.load_config_file(str(ROOT / "configs" / f"{name}.py") + f":{arg}")


def stage_components(stage: str) -> tuple[str, ...]:
    cls = stage_class(stage)
    trained = tuple(c for names in cls.group_components.values() for c in names)
    return tuple(c for c in trained + tuple(cls.frozen_components) if c in config_lib.MODEL_CLASSES or c == "clap")


def diffusers_count(config: UNetConfig) -> int:
    """Parameters of diffusers' UNet built from the same config on the meta device (shapes only)."""
    with torch.device("meta"):
        model = AudioLDM2UNet2DConditionModel(**sizes.unet_to_diffusers(config))
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------------
# Every config file x every stage
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", common.STAGE_ORDER)
@pytest.mark.parametrize("name", CONFIG_FILES)
def test_config_validates_and_builds_its_models(name, stage):
    c = load(name, stage)
    config_lib.validate(c, num_devices=8, process_count=1)
    assert c.stage == stage
    models = {component: config_lib.model_config(c, component) for component in stage_components(stage)}
    assert models, stage

    # The recipe every full-size config shares.
    assert c.compute_dtype == "auto" and dict(c.mesh) == {"data": -1, "fsdp": 1, "tensor": 1}
    assert c.data.source == "manifest" and c.data.path == "" and c.data.clip_seconds == 10.24
    assert tuple(c.ldm.loa_lambdas) == (1, 2, 4, 8) and c.ldm.cond_dropout == 0.1 and c.ldm.scale_by_std
    assert c.batch_size % 8 == 0 and c.num_steps > 0 and c.optimizer.warmup_steps < c.num_steps
    # Earlier stages' exports are where link_stages puts them.
    for component, producer in common.STAGE_INPUTS[stage].items():
        assert c.init[component].endswith(f"/{producer}/export") or (name == "scaling" and component == "unet"), \
            (component, c.init[component])

    # The cross-checks the stages make when they are built (widths of the streams each network feeds another).
    cfg = {n: config_lib.model_config(c, n) for n in ("unet", "vae", "audiomae", "t5", "gpt2", "projection", "clap")}
    assert context_dims(cfg["unet"]) == (cfg["audiomae"].embed_dim, cfg["t5"].d_model) == (768, 1024)
    assert cfg["unet"].in_channels == cfg["vae"].latent_channels == 8
    assert cfg["gpt2"].max_new_tokens == loa_token_count(c.gpt2.loa_lambda, cfg["audiomae"].grid) == 8
    assert cfg["gpt2"].n_embd == cfg["projection"].language_model_dim == cfg["audiomae"].embed_dim
    assert cfg["projection"].text_encoder_dim == cfg["clap"].text.projection_dim == 512
    assert cfg["projection"].text_encoder_1_dim == cfg["t5"].d_model
    for lam in c.ldm.loa_lambdas:  # every pooling rate divides the 64 x 8 AudioMAE patch grid
        loa_token_count(lam, cfg["audiomae"].grid)


def test_published_sizes_are_read_through_the_converters():
    base = load("audioldm2_base", "ldm")
    large = load("audioldm2_large", "ldm")
    music = load("audioldm2_music", "ldm")
    unet = config_lib.model_config(base, "unet")
    assert unet == UNetConfig.from_diffusers(PUBLISHED_UNET)
    assert unet.block_out_channels == (128, 256, 384, 640) and unet.cross_attention_dim == ((None, 768, 1024),) * 4
    vae, mae, t5 = (config_lib.model_config(base, n) for n in ("vae", "audiomae", "t5"))
    assert vae.block_out_channels == (128, 256, 512) and vae.latent_channels == 8
    assert (mae.input_frames, mae.mel_bins, mae.patch_size, mae.embed_dim, mae.depth, mae.num_heads) == \
        (1024, 128, 16, 768, 12, 12)
    assert (t5.d_model, t5.num_layers, t5.d_ff, t5.num_heads) == (1024, 24, 2816, 16)
    clap = config_lib.clap_config(base)
    assert clap.text.layer_norm_eps == 1e-5 and clap.audio.depths == (2, 2, 12, 2) and clap.audio.hidden_size == 1024
    gpt2 = config_lib.model_config(base, "gpt2")
    assert (gpt2.n_embd, gpt2.n_layer, gpt2.n_head, gpt2.vocab_size) == (768, 12, 12, 50257)

    # music: base's shapes everywhere; large: base's except the two UNet fields
    assert config_lib.as_dict(music.model) == config_lib.as_dict(base.model)
    assert music.data.audio_template == "{ytid}.wav" and base.data.audio_template == "{youtube_id}.wav"
    large_unet = config_lib.model_config(large, "unet")
    assert large_unet == dataclasses.replace(unet, transformer_layers_per_block=(2,) * 4,
                                             cross_attention_dim=((None, 768, 1024, None),) * 4)
    for n in ("vae", "vocoder", "audiomae", "gpt2", "t5", "projection"):
        assert config_lib.model_config(large, n) == config_lib.model_config(base, n), n


def test_stage_settings_and_options():
    ldm = load("audioldm2_base", "ldm,data=/d/train.csv,audio_root=/d/wav,pretrained=/ckpt/audioldm2,root=/r,"
                                 "steps=1000,batch=64,lr=3e-5")
    assert (ldm.data.path, ldm.data.audio_root, ldm.num_steps, ldm.batch_size) == ("/d/train.csv", "/d/wav", 1000, 64)
    assert ldm.optimizer.learning_rate == 3e-5 and ldm.optimizer.warmup_steps == 500  # capped at half the run
    assert ldm.init.t5 == "/ckpt/audioldm2" and ldm.text.t5_tokenizer == "/ckpt/audioldm2/tokenizer_2"
    assert ldm.init.vae == "/r/vae/export" and ldm.init.audiomae == "/r/audiomae/export" and ldm.init.clap == ""
    assert ldm.ema.decay == 0.9999 and ldm.data.compute_fbank and ldm.data.compute_log_mel and ldm.data.require_text
    gpt2 = load("audioldm2_base", "gpt2,pretrained=/ckpt/audioldm2")
    assert gpt2.init.clap == "/ckpt/audioldm2" and gpt2.gpt2.loss == "l1" and gpt2.optimizer.learning_rate == 2e-4
    mae = load("audioldm2_base", "audiomae")
    assert mae.batch_size == 512 and mae.audiomae.mask_ratio == 0.8 and not mae.data.require_text
    vae = load("audioldm2_base", "vae")
    assert vae.vae.disc_start < vae.num_steps  # the adversarial term is part of the run
    with pytest.raises(ValueError, match="'colour=red'"):
        load("audioldm2_base", "ldm,colour=red")
    with pytest.raises(ValueError, match="'speech'.*first field must be a stage"):
        load("audioldm2_base", "speech")


# ----------------------------------------------------------------------------------------------------------------
# Parameter counts and the scaling family
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.slow  # traces the full-size base and large inits (~30 s of CPU)
def test_published_unet_parameter_counts():
    base = config_lib.model_config(load("audioldm2_base", "ldm"), "unet")
    large = config_lib.model_config(load("audioldm2_large", "ldm"), "unet")
    n_base, n_large = sizes.unet_param_count(base), sizes.unet_param_count(large)
    # configs/published/README.md: 346.9M (base, exact to 0.1M); "about 718M" (large)
    assert abs(n_base / 346.9e6 - 1) < 1e-3, n_base
    assert abs(n_large / 718e6 - 1) < 1e-3, n_large
    assert (n_base, n_large) == (diffusers_count(base), diffusers_count(large))


def test_scaled_unet_shapes_and_errors():
    unet = sizes.scaled_unet(0.5, 2)
    assert unet.block_out_channels == (64, 128, 192, 320) and unet.layers_per_block == (4, 4, 4, 4)
    assert unet.num_heads == (8, 8, 8, 8) and unet.cross_attention_dim == ((None, 768, 1024),) * 4
    odd = sizes.scaled_unet(0.3, 0.5, transformer_layers=2)
    # 38.4, 76.8, 115.2, 192 rounded to multiples of the 32 GroupNorm groups
    assert odd.block_out_channels == (32, 64, 128, 192) and odd.layers_per_block == (1, 1, 1, 1)
    assert odd.transformer_layers_per_block == (2, 2, 2, 2)
    assert sizes.preset_unet("base") == UNetConfig.from_diffusers(PUBLISHED_UNET)
    with pytest.raises(ValueError, match="width=-1"):
        sizes.scaled_unet(-1)
    with pytest.raises(ValueError, match="transformer_layers=0"):
        sizes.scaled_unet(1, 1, 0)
    with pytest.raises(ValueError, match="'huge'"):
        sizes.preset_unet("huge")

    c = load("scaling", "ldm,width=0.5,depth=2")
    assert config_lib.model_config(c, "unet") == unet
    s = load("scaling", "joint,preset=s")
    assert config_lib.model_config(s, "unet") == sizes.preset_unet("s") and s.init.unet == "runs/scaling/s/ldm/export"
    assert load("scaling", "joint,preset=s,depth=2").init.unet == "runs/scaling/w0.5_d2_t1/ldm/export"
    with pytest.raises(ValueError, match="preset='huge'"):
        load("scaling", "ldm,preset=huge")
    # presets grow in both multipliers
    presets = list(sizes.SCALING_PRESETS.values())
    assert presets == sorted(presets) and sizes.SCALING_PRESETS["base"] == (1.0, 1.0)


@pytest.mark.slow  # traces five small-UNet inits (~30 s of CPU)
def test_scaling_parameter_counts_are_monotone_and_exact():
    # Tracing time grows with depth, not width: three widths, two depths, two transformer depths.
    by_width = [sizes.unet_param_count(sizes.scaled_unet(w, 0.5)) for w in (0.25, 0.5, 1.0)]
    by_depth = [sizes.unet_param_count(sizes.scaled_unet(0.25, d)) for d in (0.5, 1.0)]
    by_tlayers = [sizes.unet_param_count(sizes.scaled_unet(0.25, 0.5, t)) for t in (1, 2)]
    for counts in (by_width, by_depth, by_tlayers):
        assert all(a < b for a, b in zip(counts, counts[1:])), counts
    xs = sizes.preset_unet("xs")
    assert sizes.unet_param_count(xs) == by_width[0] == by_depth[0] == by_tlayers[0] == diffusers_count(xs)
    assert by_depth[1] == diffusers_count(sizes.scaled_unet(0.25, 1.0))
    assert by_tlayers[1] == diffusers_count(sizes.scaled_unet(0.25, 0.5, 2))


@pytest.mark.slow  # traces and lowers a training step (~25 s of CPU)
def test_training_flops_of_a_small_preset_against_pytorch_counter():
    # 2.56 s clips keep PyTorch's meta-device pass short; the xs preset still has every block type. PyTorch's
    # counter counts matmuls and convolutions at 2 FLOPs per multiply-add (attention through the classic
    # processor, whose bmm's it sees); XLA's cost analysis also counts element-wise ops (norms, activations,
    # softmax) but skips convolution taps that fall on zero padding. The two differ by a few percent, not by the
    # factors a missing backward (x1/3), a double-counted pass or a wrong batch would give.
    frames = 256
    config = sizes.preset_unet("xs")
    ours = sizes.unet_train_flops(config, frames=frames)
    with torch.device("meta"):
        model = AudioLDM2UNet2DConditionModel(**sizes.unet_to_diffusers(config))
        model.set_attn_processor(AttnProcessor())
        x = torch.empty(1, 8, frames // 4, 16)
        with FlopCounterMode(display=False) as counter:
            out = model(x, torch.tensor([10]), encoder_hidden_states=torch.empty(1, sizes.LOA_TOKENS, 768),
                        encoder_hidden_states_1=torch.empty(1, sizes.T5_TOKENS, 1024),
                        encoder_attention_mask_1=torch.ones(1, sizes.T5_TOKENS, dtype=torch.long)).sample
            forward = counter.get_total_flops()
            ((out - x) ** 2).mean().backward()
    reference = counter.get_total_flops()
    assert 2.5 < reference / forward < 3.0  # the reference itself: backward ~2x forward
    assert abs(ours / reference - 1) < 0.05, (ours, reference)
