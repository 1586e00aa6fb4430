"""Times AudioLDM2Pipeline end to end against diffusers' AudioLDM2Pipeline, in the same process, on the same
random weights and the same initial latents.

Base config (audioldm2_jax/configs/published/audioldm2-base: UNet 347M, T5-large encoder, CLAP, GPT-2, VAE,
HiFi-GAN), random weights, B prompts of 10.24 s, DPM-Solver++, guidance 3.5 (the UNet runs on 2B rows). Tokenizers are the tiny ones
of tests/pipeline_fixtures.py with the published maximum lengths (CLAP 512, T5 128): prompts tokenize into more,
shorter tokens than with the real vocabularies, which changes nothing of the models' cost at these lengths.

Ours: the first call compiles (reported apart) and runs; the following calls are timed. diffusers: eager, or with
its UNet through ``torch.compile`` (--torch-compile), timed after a warm-up call with one step (which is where
torch.compile compiles; --no-warmup skips it). Wall time is the median over --repeats. Prints a Markdown table.

--dtype sets the compute dtype of both sides: ours ``AudioLDM2Pipeline.from_pretrained(dtype=...)`` (UNet, VAE and
vocoder; the text encoders stay float32), diffusers' whole pipeline moved to that dtype (``pipe.to(dtype)``, as its
model card runs it in float16).

    python bench/pipeline.py                                   # CPU: 4 x 10.24 s, DPM-Solver++ 20 steps
    python bench/pipeline.py --batch 4 --steps 20 --repeats 2
    python bench/pipeline.py --batch 16 --dtype fp16 --torch-compile --repeats 3   # GPU
    python bench/pipeline.py --tiny --batch 2 --steps 3        # the test suite's tiny checkpoint: checks the script
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "audioldm2_jax" / "configs" / "published" / "audioldm2-base"
PROMPTS = ["techno music with a strong upbeat tempo and high melodic riffs", "a dog barks in the rain",
           "birds sing at dawn near a quiet river", "a violin plays a slow sad melody in a large hall",
           "thunder rolls over the hills", "children laugh and play in a park", "waves crash against rocks",
           "a cat purrs next to a warm fire", "a steam train passes a level crossing", "rain falls on a tin roof",
           "a crowd cheers in a stadium", "an old clock ticks in a quiet room", "a jazz trio plays in a small club",
           "wind howls through a narrow canyon", "a helicopter flies overhead", "church bells ring on a sunday"]
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}  # --dtype -> the dtype's name in jnp and torch


def _published(name: str) -> dict:
    import json

    return {k: v for k, v in json.loads((PUBLISHED / f"{name}.json").read_text()).items() if not k.startswith("_")}


def build_reference():
    """diffusers' AudioLDM2Pipeline with the published base shapes and random weights."""
    import torch
    from diffusers import AudioLDM2Pipeline, AutoencoderKL, DDIMScheduler
    from diffusers.pipelines.audioldm2.modeling_audioldm2 import (AudioLDM2ProjectionModel,
                                                                   AudioLDM2UNet2DConditionModel)
    from transformers import (ClapConfig, ClapFeatureExtractor, ClapModel, GPT2Config, GPT2LMHeadModel,
                              SpeechT5HifiGan, SpeechT5HifiGanConfig, T5Config, T5EncoderModel)

    sys.path.insert(0, str(ROOT / "tests"))
    from pipeline_fixtures import roberta_tokenizer, t5_tokenizer

    torch.manual_seed(0)
    clap = _published("text_encoder")
    text, audio = clap["text_config"], clap["audio_config"]
    clap_config = ClapConfig(
        text_config=dict(vocab_size=text["vocab_size"], hidden_size=text["hidden_size"],
                         num_hidden_layers=text["num_hidden_layers"], num_attention_heads=text["num_attention_heads"],
                         intermediate_size=text["intermediate_size"],
                         max_position_embeddings=text["max_position_embeddings"], layer_norm_eps=1e-5),
        audio_config=dict(depths=audio["depths"], hidden_size=audio["hidden_size"],
                          patch_embeds_hidden_size=audio["patch_embeds_hidden_size"],
                          num_mel_bins=audio["num_mel_bins"]),
        projection_dim=clap["projection_dim"])
    t5 = _published("text_encoder_2")
    t5_config = T5Config(**{k: t5[k] for k in ("d_model", "d_ff", "d_kv", "num_heads", "num_layers",
                                                "feed_forward_proj", "vocab_size", "relative_attention_num_buckets",
                                                "relative_attention_max_distance", "layer_norm_epsilon")})
    lm = _published("language_model")
    lm_config = GPT2Config(**{k: lm[k] for k in ("n_embd", "n_head", "n_layer", "n_positions", "vocab_size",
                                                  "activation_function", "layer_norm_epsilon", "max_new_tokens")})
    projection = _published("projection_model")
    return AudioLDM2Pipeline(
        vae=AutoencoderKL(**{k: v for k, v in _published("vae").items() if k != "force_upcast"}).eval(),
        text_encoder=ClapModel(clap_config).eval(), text_encoder_2=T5EncoderModel(t5_config).eval(),
        projection_model=AudioLDM2ProjectionModel(**projection).eval(),
        language_model=GPT2LMHeadModel(lm_config).eval(),
        tokenizer=roberta_tokenizer(model_max_length=text["tokenizer_max_length"]),
        tokenizer_2=t5_tokenizer(model_max_length=t5["tokenizer_max_length"]),
        feature_extractor=ClapFeatureExtractor(truncation="rand_trunc", frequency_min=50, frequency_max=14000),
        unet=AudioLDM2UNet2DConditionModel(**_published("unet")).eval(),
        scheduler=DDIMScheduler(**_published("scheduler")),
        vocoder=SpeechT5HifiGan(SpeechT5HifiGanConfig(**_published("vocoder"))).eval())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4, help=f"prompts per call (at most {len(PROMPTS)})")
    parser.add_argument("--duration", type=float, default=10.24)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scheduler", default="dpmsolver++", choices=["ddim", "dpmsolver++"])
    parser.add_argument("--guidance", type=float, default=3.5)
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per side (median)")
    parser.add_argument("--no-warmup", action="store_true", help="no one-step warm-up call of diffusers")
    parser.add_argument("--skip-reference", action="store_true", help="time ours only")
    parser.add_argument("--workdir", default=None, help="where the random checkpoint is written (default: a tmp dir)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="compute dtype of both sides")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--torch-compile", action="store_true", help="diffusers' UNet through torch.compile")
    parser.add_argument("--tiny", action="store_true",
                        help="the test suite's tiny random checkpoint (tests/pipeline_fixtures.py) instead of base shapes")
    args = parser.parse_args()
    if not 1 <= args.batch <= len(PROMPTS):
        parser.error(f"--batch must be 1 to {len(PROMPTS)}, got {args.batch}")

    import diffusers
    import jax
    import jax.numpy as jnp
    import torch
    import transformers
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    sys.path.insert(0, str(ROOT / "tests"))
    from pipeline_fixtures import build_reference_pipeline, save_checkpoint

    from audioldm2_jax import AudioLDM2Pipeline
    from audioldm2_jax.pipeline import NonFiniteOutputError

    diffusers.utils.logging.set_verbosity_error()  # the tiny tokenizers' truncation warnings, once per call
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(os.cpu_count())
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    jax_dtype, torch_dtype = getattr(jnp, DTYPES[args.dtype]), getattr(torch, DTYPES[args.dtype])
    prompts = PROMPTS[:args.batch]
    start = time.perf_counter()
    reference = build_reference_pipeline("text") if args.tiny else build_reference()
    print(f"# built the reference in {time.perf_counter() - start:.0f} s", flush=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        save_checkpoint(reference, workdir)
        start = time.perf_counter()
        pipe = AudioLDM2Pipeline.from_pretrained(workdir, dtype=jax_dtype)
        load_s = time.perf_counter() - start
    latents = np.random.default_rng(0).standard_normal(pipe.latent_shape(len(prompts), args.duration), np.float32)
    kwargs = dict(audio_length_in_s=args.duration, num_inference_steps=args.steps, guidance_scale=args.guidance)
    audio_s = len(prompts) * args.duration

    print(f"# AudioLDM 2 {'tiny' if args.tiny else 'base'}, random weights: {len(prompts)} x {args.duration} s, "
          f"{args.scheduler} {args.steps} steps, guidance {args.guidance}, {args.dtype}"
          f"{', diffusers UNet torch.compile' if args.torch_compile else ''}")
    print(f"# jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.device_count()} devices); torch "
          f"{torch.__version__} on {device} ({torch.get_num_threads()} threads); "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; ours loaded in {load_s:.0f} s",
          flush=True)

    def run_ours():
        """(waveforms, timings) of one call; random weights in float16 may overflow, which is reported, not fatal."""
        try:
            generation = pipe.generate(prompts, latents=latents, scheduler=args.scheduler, **kwargs)
            return generation.waveforms, generation.timings
        except NonFiniteOutputError as error:
            print(f"# ours: non-finite output in rows {error.rows} ({args.dtype}, random weights)", flush=True)
            return error.waveforms, error.timings

    first, timings = run_ours()
    compile_s = timings.compile
    print(f"# ours: first call {timings.total:.1f} s, of which compilation {compile_s:.1f} s", flush=True)
    ours_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours, timings = run_ours()
        ours_times.append(time.perf_counter() - start)
        print(f"# ours: {ours_times[-1]:.2f} s ({timings})", flush=True)
    ours_s = statistics.median(ours_times)
    assert np.array_equal(first, ours, equal_nan=True)

    rows = [("ours (JAX)", f"{compile_s:.1f}", ours_s)]
    err_line = ""
    if not args.skip_reference:
        scheduler_class = DPMSolverMultistepScheduler if args.scheduler == "dpmsolver++" else DDIMScheduler
        reference.scheduler = scheduler_class.from_config(reference.scheduler.config)
        reference.set_progress_bar_config(disable=True)
        reference.to(device, torch_dtype)
        if args.torch_compile:
            reference.unet = torch.compile(reference.unet)
        reference_latents = torch.from_numpy(latents).to(device, torch_dtype)

        def run_reference(steps):
            with torch.no_grad():
                return reference(prompts, latents=reference_latents, output_type="np",
                                 **dict(kwargs, num_inference_steps=steps)).audios

        if not args.no_warmup:
            start = time.perf_counter()
            run_reference(1)
            print(f"# diffusers: warm-up call (1 step{', torch.compile' if args.torch_compile else ''}) "
                  f"{time.perf_counter() - start:.1f} s", flush=True)
        ref_times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            expected = run_reference(args.steps)
            ref_times.append(time.perf_counter() - start)
            print(f"# diffusers: {ref_times[-1]:.1f} s", flush=True)
        ref_s = statistics.median(ref_times)
        rows.append((f"diffusers (PyTorch{', torch.compile UNet' if args.torch_compile else ', eager'})", "-", ref_s))
        expected = np.asarray(expected, np.float32)
        finite = np.isfinite(ours) & np.isfinite(expected)
        err_line = (f"waveform max abs error {np.abs(ours - expected)[finite].max(initial=0):.2e} at a waveform "
                    f"scale of {np.abs(expected)[finite].max(initial=0):.2e} over the samples finite on both sides "
                    f"({finite.mean():.1%}; random HiFi-GAN weights give tiny waveforms)")

    print("\n| pipeline | compile (s) | wall (s) | audio s / wall s |")
    print("|---|---|---|---|")
    for name, compile_text, seconds in rows:
        print(f"| {name} | {compile_text} | {seconds:.1f} | {audio_s / seconds:.3f} |")
    if len(rows) == 2:
        print(f"\ndiffusers / ours wall time: {rows[1][2] / rows[0][2]:.2f}x; {err_line}")


if __name__ == "__main__":
    main()
