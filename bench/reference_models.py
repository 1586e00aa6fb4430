"""Full-size PyTorch reference components of AudioLDM 2 (base) with random weights, for the benches.

Each component is built from the published configuration values
(``audioldm2_jax/configs/published/audioldm2-base/*.json`` in this repository, or
``/work/shared/reference/audioldm2-base/``), given random weights with the same perturbations the small-config parity
tests use (so that norms, biases and zero-initialised tables all matter), and saved with
``save_pretrained`` where our registry (``audioldm2_jax.components``) can read it:

    from bench.reference_models import save_reference
    model, folder = save_reference("unet", "/tmp/unet")          # diffusers AudioLDM2UNet2DConditionModel
    config, params, _ = components.load("unet", folder)

Components (name -> reference class, published config file):

    unet        diffusers AudioLDM2UNet2DConditionModel   unet.json
    vae         diffusers AutoencoderKL                   vae.json
    vocoder     transformers SpeechT5HifiGan              vocoder.json
    gpt2        transformers GPT2Model                    language_model.json
    t5          transformers T5EncoderModel               text_encoder_2.json
    clap        transformers ClapModel (both branches)    text_encoder.json
    projection  diffusers AudioLDM2ProjectionModel        projection_model.json

torch, transformers and diffusers are imported lazily: importing this module costs nothing.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the initialisations the parity tests use
from reference_init import fan_in_vocoder  # noqa: E402
_CANDIDATE_DIRS = (ROOT / "audioldm2_jax" / "configs" / "published" / "audioldm2-base",
                   Path("/work/shared/reference/audioldm2-base"))

CONFIG_FILES = {
    "unet": "unet.json",
    "vae": "vae.json",
    "vocoder": "vocoder.json",
    "gpt2": "language_model.json",
    "t5": "text_encoder_2.json",
    "clap": "text_encoder.json",
    "projection": "projection_model.json",
}
COMPONENTS = tuple(CONFIG_FILES)

# Parameter counts of the published checkpoints (millions), from the reference README: a built model that does
# not match was built from a misread config.
PUBLISHED_PARAMS_M = {"unet": 346.9, "vae": 55.4, "vocoder": 55.3, "gpt2": 124.4, "t5": 341.2, "clap": 193.9,
                      "projection": 1.18}

# What each component's random weights get on top of the library's own initialisation (mirrors tests/test_*.py).
PERTURBATIONS = {
    "unet": "every parameter += 0.05 * N(0, 1) (as tests/test_unet.py)",
    "vae": "every norm parameter += 0.3 * N(0, 1) (as tests/test_vae.py)",
    "vocoder": "every conv re-drawn N(0, 1/fan_in), biases N(0, 0.1) (as tests/test_vocoder.py): the waveform "
               "is ~0.06 std instead of the ~1e-6 of transformers' init, and the final tanh is not saturated",
    "gpt2": "layer-norm scales U(0.5, 1.5), layer-norm biases N(0, 0.1), other biases N(0, 0.05) "
            "(as tests/test_gpt2.py)",
    "t5": "layer-norm scales U(0.5, 1.5) (as tests/test_t5.py)",
    "clap": "norms and Swin relative-position tables += 0.3 * N(0, 1), random BatchNorm statistics, "
            "logit_scale_t = 2.5 (as tests/test_clap.py)",
    "projection": "every parameter N(0, 0.5) (as tests/test_projection.py)",
}

def reference_dir(path: str | os.PathLike | None = None) -> Path:
    """The folder of published config files: ``path`` if given, else the repository copy, else the shared one."""
    if path is not None:
        folder = Path(path)
        if not (folder / "unet.json").is_file():
            raise FileNotFoundError(f"{folder}: no unet.json (expected the audioldm2-base config files)")
        return folder
    for folder in _CANDIDATE_DIRS:
        if (folder / "unet.json").is_file():
            return folder
    raise FileNotFoundError("no audioldm2-base config files in " + ", ".join(map(str, _CANDIDATE_DIRS)))


def published_config(name: str, folder: str | os.PathLike | None = None) -> dict:
    """The raw published config dict of component ``name``."""
    if name not in CONFIG_FILES:
        raise ValueError(f"unknown component {name!r}; expected one of {', '.join(COMPONENTS)}")
    return json.loads((reference_dir(folder) / CONFIG_FILES[name]).read_text())


def _without_private(d: dict, *extra: str) -> dict:
    return {k: v for k, v in d.items() if not k.startswith("_") and k not in extra}


def _torch_config(name: str, d: dict):
    """The published values -> what the reference class's constructor takes (a dict for diffusers, a config
    object for transformers)."""
    import transformers

    if name in ("unet", "vae", "projection"):
        return _without_private(d)
    if name == "vocoder":
        return transformers.SpeechT5HifiGanConfig(**_without_private(d))
    if name == "gpt2":
        # max_new_tokens belongs to the pipeline's generation loop, not to the model.
        return transformers.GPT2Config(**_without_private(d, "max_new_tokens"), resid_pdrop=0.0, embd_pdrop=0.0,
                                       attn_pdrop=0.0)
    if name == "t5":
        return transformers.T5Config(**_without_private(d, "tokenizer_max_length"), dropout_rate=0.0,
                                     is_encoder_decoder=False, use_cache=False)
    if name == "clap":
        # text_encoder.json describes laion/clap-htsat-unfused in words plus its sizes; keep the keys that
        # transformers' ClapTextConfig / ClapAudioConfig know. projection_hidden_size is a legacy key (the
        # projection is Linear(hidden, projection_dim) -> ReLU -> Linear) and the layer-norm epsilon is
        # RoBERTa's 1e-5 (it is not in the file).
        text = _without_private(d["text_config"], "model", "projection_hidden_size", "tokenizer_max_length")
        audio = _without_private(d["audio_config"], "model", "projection_hidden_size", "sampling_rate",
                                 "hop_length")
        return transformers.ClapConfig(text_config=dict(text, layer_norm_eps=1e-5), audio_config=audio,
                                       projection_dim=d["projection_dim"])
    raise ValueError(f"unknown component {name!r}")


def _perturb(name: str, model) -> None:
    """The tests' perturbations (see ``PERTURBATIONS``), drawn from torch's global generator."""
    import torch

    with torch.no_grad():
        if name == "unet":
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        elif name == "vae":
            for pname, p in model.named_parameters():
                if "norm" in pname:
                    p.add_(0.3 * torch.randn_like(p))
        elif name == "vocoder":
            fan_in_vocoder(model)
        elif name == "gpt2":
            for pname, p in model.named_parameters():
                if "ln_" in pname:
                    p.uniform_(0.5, 1.5) if pname.endswith("weight") else p.normal_(0.0, 0.1)
                elif pname.endswith("bias"):
                    p.normal_(0.0, 0.05)
        elif name == "t5":
            for pname, p in model.named_parameters():
                if "layer_norm" in pname:
                    p.uniform_(0.5, 1.5)
        elif name == "clap":
            for pname, p in model.named_parameters():
                if ("relative_position_bias_table" in pname or "LayerNorm" in pname or ".norm" in pname
                        or "layernorm" in pname):
                    p.add_(0.3 * torch.randn_like(p))
            bn = model.audio_model.audio_encoder.batch_norm
            bn.running_mean.copy_(torch.randn_like(bn.running_mean))
            bn.running_var.copy_(torch.rand_like(bn.running_var) + 0.5)
            bn.weight.copy_(1 + 0.3 * torch.randn_like(bn.weight))
            bn.bias.copy_(0.3 * torch.randn_like(bn.bias))
            model.logit_scale_t.fill_(2.5)
        elif name == "projection":
            for p in model.parameters():
                p.normal_(0.0, 0.5)


def build_reference(name: str, seed: int = 0, perturb: bool = True, config_dir: str | os.PathLike | None = None):
    """The full-size reference ``torch.nn.Module`` of component ``name`` in eval mode, fp32, on the CPU, with
    random weights (seeded; perturbed as in ``PERTURBATIONS`` unless ``perturb=False``)."""
    import torch

    config = _torch_config(name, published_config(name, config_dir))
    torch.manual_seed(seed)
    if name == "unet":
        from diffusers.pipelines.audioldm2.modeling_audioldm2 import AudioLDM2UNet2DConditionModel

        model = AudioLDM2UNet2DConditionModel(**config)
    elif name == "vae":
        from diffusers import AutoencoderKL

        model = AutoencoderKL(**config)
    elif name == "projection":
        from diffusers.pipelines.audioldm2.modeling_audioldm2 import AudioLDM2ProjectionModel

        model = AudioLDM2ProjectionModel(**config)
    else:
        import transformers

        cls = {"vocoder": transformers.SpeechT5HifiGan, "gpt2": transformers.GPT2Model,
               "t5": transformers.T5EncoderModel, "clap": transformers.ClapModel}[name]
        model = cls(config)
    model = model.float().eval()
    if perturb:
        _perturb(name, model)
    return model


def count_params_m(model) -> float:
    """Parameters (not buffers) in millions."""
    return sum(p.numel() for p in model.parameters()) / 1e6


def save_reference(name: str, folder: str | os.PathLike, seed: int = 0, perturb: bool = True,
                   config_dir: str | os.PathLike | None = None):
    """Builds ``build_reference(name, seed, perturb)`` and writes it to ``folder`` with ``save_pretrained``
    (``config.json`` + safetensors). Returns ``(model, folder)``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = build_reference(name, seed=seed, perturb=perturb, config_dir=config_dir)
    model.save_pretrained(folder)
    return model, folder
