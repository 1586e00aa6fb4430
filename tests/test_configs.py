"""The full-size training configs (configs/audioldm2_{base,large,music}.py, configs/scaling.py, packaged in
audioldm2_jax/configs/) and the model-size helpers of configs/sizes.py; how ``--config`` paths name them, their
argument parser, and the stage graph they read from the stage classes.

Nothing full-size is compiled: configs are validated and their model dataclasses built; parameter counts come from
``jax.eval_shape`` and are checked against the published numbers and against diffusers' PyTorch UNet built on the
meta device (no memory) and counted with ``sum(p.numel())``; the FLOPs of a small preset are checked against
PyTorch's FLOP counter on the same model.
"""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor
from diffusers.pipelines.audioldm2.modeling_audioldm2 import AudioLDM2UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

from audioldm2_jax.configs import common, sizes
from audioldm2_jax.configs import smoke as packaged_smoke
from audioldm2_jax.models.audiomae import loa_token_count
from audioldm2_jax.models.unet import UNetConfig, context_dims
from audioldm2_jax.train import config as config_lib
from audioldm2_jax.train.stages import STAGE_ORDER, STAGES, stage_class, stage_dependencies, stage_inputs

ROOT = Path(__file__).resolve().parents[1]

CONFIG_FILES = ("audioldm2_base", "audioldm2_large", "audioldm2_music", "scaling")
PUBLISHED_UNET = json.loads((ROOT / "audioldm2_jax/configs/published/audioldm2-base/unet.json").read_text())


def load(name: str, arg: str):
    return config_lib.load_config_file(f"configs/{name}.py:{arg}")


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


@pytest.mark.parametrize("stage", STAGE_ORDER)
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
    for component, producer in stage_class(stage).reads_from.items():
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
    # audioldm2_jax/configs/published/README.md: 346.9M (base, exact to 0.1M); "about 718M" (large)
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


# ----------------------------------------------------------------------------------------------------------------
# Config paths, the config files' argument parser, the stage graph
# ----------------------------------------------------------------------------------------------------------------


def test_config_paths_name_the_packaged_files_from_any_directory(tmp_path, monkeypatch):
    """``configs/<name>.py`` names the packaged file from any working directory (as ``--config`` reads it); a file
    that exists at the given path wins; a missing one is an error naming it and the packaged configs."""
    packaged = Path(packaged_smoke.__file__)
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    assert config_lib.resolve_config_path("configs/smoke.py") == packaged
    assert (config_lib.resolve_config_spec("configs/quickstart.py:ldm,micro=1")
            == f"{packaged.parent}/quickstart.py:ldm,micro=1")
    assert config_lib.load_config_file("configs/smoke.py").to_dict() == packaged_smoke.get_config().to_dict()
    assert config_lib.load_config_file(str(packaged)).to_dict() == packaged_smoke.get_config().to_dict()

    own = tmp_path / "configs" / "smoke.py"  # a user's own file of the same name
    own.parent.mkdir()
    own.write_text("from audioldm2_jax.configs import smoke\n\n\ndef get_config(arg=''):\n"
                   "    c = smoke.get_config()\n    c.num_steps = 3\n    return c\n")
    assert config_lib.resolve_config_path("configs/smoke.py") == Path("configs/smoke.py")
    assert config_lib.load_config_file("configs/smoke.py").num_steps == 3
    with pytest.raises(FileNotFoundError, match=r"'configs/nothing.py' does not exist .*configs/smoke.py"):
        config_lib.load_config_file("configs/nothing.py:ldm")


def test_one_argument_parser_for_every_config_file():
    assert common.parse_arg("ldm, root=/r,steps=5", ("root", "steps")) == ("ldm", {"root": "/r", "steps": "5"})
    assert common.parse_arg("joint,root=a=b", ("root",)) == ("joint", {"root": "a=b"})
    for arg, message in (("", "'': the first field must be a stage"), ("speech", "'speech': the first field"),
                         ("ldm,root", "unknown option 'root'"), ("ldm,colour=red", "unknown option 'colour=red'")):
        with pytest.raises(ValueError, match=message):
            common.parse_arg(arg, ("root",))
    # Every config file that takes options reads them with it: an unknown option is refused, naming it (the
    # quickstart's used to be ignored).
    for name in CONFIG_FILES + ("audioldm2_speech", "quickstart"):
        with pytest.raises(ValueError, match="unknown option 'colour=red'"):
            load(name, "ldm,colour=red")
        with pytest.raises(ValueError, match="first field must be a stage"):
            load(name, "toy")


def test_stage_graph_comes_from_the_stage_classes():
    """The training graph of the paper (what each stage reads from earlier exports; the joint stage carries the
    vocoder so that its export is a complete model), written out by hand; the order trains producers first."""
    assert STAGE_ORDER == ("vae", "vocoder", "audiomae", "ldm", "gpt2", "joint") and STAGES == STAGE_ORDER + ("toy",)
    expected = {
        "vae": {}, "vocoder": {}, "audiomae": {},
        "ldm": {"vae": "vae", "audiomae": "audiomae"},
        "gpt2": {"audiomae": "audiomae"},
        "joint": {"unet": "ldm", "vae": "ldm", "audiomae": "audiomae", "gpt2": "gpt2", "projection": "gpt2",
                  "vocoder": "vocoder"},
    }
    assert {stage: stage_inputs(stage) for stage in STAGE_ORDER} == expected
    assert stage_class("joint").carries_from == {"vocoder": "vocoder"}
    for stage in STAGE_ORDER:
        assert all(STAGE_ORDER.index(d) < STAGE_ORDER.index(stage) for d in stage_dependencies(stage)), stage
        assert stage_class(stage).name == stage
    assert stage_dependencies("joint") == ("vocoder", "audiomae", "ldm", "gpt2")
    # link_stages points init at those exports, and at the shared text encoders the stage runs frozen.
    for stage in STAGE_ORDER:
        c = common.base_config()
        common.link_stages(c, stage, "/r", text_dir="/t")
        linked = {k: v for k, v in c.init.items() if v}
        text = {e: f"/t/{e}" for e in ("t5", "clap") if e in stage_class(stage).frozen_components}
        assert linked == {**{k: f"/r/{v}/export" for k, v in expected[stage].items()}, **text}, stage
    assert set(text) == {"t5", "clap"}  # joint runs both
