"""Full-size parity of every AudioLDM 2 (base) component against the PyTorch reference, on random weights.

Each component is built at its published size (``bench/reference_models.py``: diffusers / transformers classes,
random weights perturbed as in the small-config tests), saved with ``save_pretrained``, loaded with our
registry (``audioldm2_jax.components``), and both run on the same 10.24 s inputs in fp32:

    unet        latents [1, 8, 256, 16], t = 500, LOA context [1, 8, 768], T5 context [1, 32, 1024] (12 padded)
    vae         encode a mel [1, 1, 1024, 64] (posterior mean and log-variance); decode a latent [1, 8, 256, 16]
    vocoder     mel [1, 1024, 64] -> waveform [1, 163872]
    t5          3 token sequences of 32 (lengths 32, 20, 7; padded) -> [3, 32, 1024]
    clap        text: 3 token sequences of 24 (lengths 24, 13, 6; padded) -> L2-normed [3, 512];
                audio: log-mel features [1, 1, 1001, 64] (10 s at 48 kHz) -> L2-normed [1, 512]
    gpt2        LOA generation: prompt [1, 37, 768] (positions 24-35 padded, as the projection's T5 stream)
                -> 8 greedy steps [1, 8, 768] (reference: diffusers' AudioLDM2Pipeline.generate_language_model)
    projection  CLAP [1, 1, 512] + T5 [1, 32, 1024] (12 padded) -> [1, 37, 768] and its mask

One table: output shape, output scale (max |ref|), max abs error, error / scale (the tests' criterion is
<= 1e-4), and the wall time of each side (PyTorch eager; ours: first jitted call including compilation, then a
second call). Components run one at a time and are freed in between.

    python bench/parity_full.py                                   # every component, CPU, fp32
    python bench/parity_full.py --components vocoder,gpt2 --workdir /tmp/parity --json out.json
    python bench/parity_full.py --device cuda                     # true fp32 matmuls on both sides (no TF32)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.reference_models import (COMPONENTS, PERTURBATIONS, PUBLISHED_PARAMS_M, count_params_m,  # noqa: E402
                                    reference_dir, save_reference)

SEED = 0
TOLERANCE = 1e-4  # the parity tests' criterion: max abs error <= 1e-4 * max |ref|


@dataclasses.dataclass
class Row:
    component: str
    output: str
    shape: tuple
    scale: float
    max_abs_err: float
    rel_err: float
    torch_s: float
    ours_first_s: float
    ours_s: float | None
    params_m: float

    @property
    def ok(self) -> bool:
        return self.rel_err <= TOLERANCE


class Runner:
    """Device placement and timing for both frameworks."""

    def __init__(self, device: str, second_call: bool):
        import jax
        import torch

        self.device, self.second_call = device, second_call
        self.jax, self.torch = jax, torch
        self.torch_device = torch.device("cuda" if device == "cuda" else "cpu")

    def to_torch(self, x):
        return self.torch.from_numpy(x).to(self.torch_device)

    def time_torch(self, fn: Callable):
        """``fn()`` under no_grad, returning (numpy outputs, seconds)."""
        torch = self.torch
        if self.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            out = fn()
        if self.device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        return self.torch_to_numpy(out), seconds

    def torch_to_numpy(self, out):
        if isinstance(out, (tuple, list)):
            return type(out)(self.torch_to_numpy(o) for o in out)
        return out.detach().float().cpu().numpy()

    def time_ours(self, fn: Callable):
        """Calls a jitted ``fn()`` once (compilation included) and, if asked, again (steady state)."""
        import numpy as np

        jax = self.jax
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        first = time.perf_counter() - start
        steady = None
        if self.second_call:
            start = time.perf_counter()
            out = jax.block_until_ready(fn())
            steady = time.perf_counter() - start
        return jax.tree.map(np.asarray, out), first, steady


def compare(component, output, ours, ref, torch_s, ours_first_s, ours_s, params_m) -> Row:
    import numpy as np

    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        raise AssertionError(f"{component} {output}: shape {ours.shape} != reference {ref.shape}")
    if not np.isfinite(ref).all():
        raise AssertionError(f"{component} {output}: the reference output is not finite (exploding activations)")
    scale = float(np.abs(ref).max())
    err = float(np.abs(ours - ref).max())
    return Row(component, output, tuple(ref.shape), scale, err, err / max(scale, 1e-30), torch_s, ours_first_s,
               ours_s, params_m)


# ----------------------------------------------------------------------------------------------------------------
# Components: each takes (runner, reference model, saved folder, params in millions, numpy rng) -> rows
# ----------------------------------------------------------------------------------------------------------------


def padded_mask(batch_lengths, length):
    import numpy as np

    mask = np.zeros((len(batch_lengths), length), np.int64)
    for row, n in enumerate(batch_lengths):
        mask[row, :n] = 1
    return mask


def check_unet(run, ref, folder, params_m, rng):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from audioldm2_jax import components
    from audioldm2_jax.models.unet import AudioLDM2UNet

    latents = rng.standard_normal((1, 8, 256, 16)).astype(np.float32)
    t = np.array([500], np.int64)
    loa = rng.standard_normal((1, 8, 768)).astype(np.float32)
    t5 = rng.standard_normal((1, 32, 1024)).astype(np.float32)
    t5_mask = padded_mask([20], 32)

    expected, torch_s = run.time_torch(lambda: ref(
        run.to_torch(latents), run.to_torch(t), encoder_hidden_states=run.to_torch(loa),
        encoder_hidden_states_1=run.to_torch(t5), encoder_attention_mask_1=run.to_torch(t5_mask)).sample)

    config, params, _ = components.load("unet", folder)
    apply = jax.jit(AudioLDM2UNet(config).apply)
    args = (jnp.asarray(latents.transpose(0, 2, 3, 1)), jnp.asarray(t.astype(np.int32)), jnp.asarray(loa), None,
            jnp.asarray(t5), jnp.asarray(t5_mask.astype(np.int32)))
    ours, first, steady = run.time_ours(lambda: apply({"params": params}, *args))
    return [compare("unet", "eps", ours.transpose(0, 3, 1, 2), expected, torch_s, first, steady, params_m)]


def check_vae(run, ref, folder, params_m, rng):
    import jax
    import numpy as np

    from audioldm2_jax import components
    from audioldm2_jax.models.vae import AutoencoderKL

    mel = (rng.standard_normal((1, 1, 1024, 64)) * 2.0 - 5.0).astype(np.float32)  # log-mel-like range
    latent = rng.standard_normal((1, 8, 256, 16)).astype(np.float32)

    def encode_ref():
        posterior = ref.encode(run.to_torch(mel)).latent_dist
        return posterior.mean, posterior.logvar

    (ref_mean, ref_logvar), encode_torch_s = run.time_torch(encode_ref)
    ref_decoded, decode_torch_s = run.time_torch(lambda: ref.decode(run.to_torch(latent)).sample)

    config, params, _ = components.load("vae", folder)
    model = AutoencoderKL(config)
    encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=AutoencoderKL.encode))
    decode = jax.jit(lambda p, z: model.apply({"params": p}, z, method=AutoencoderKL.decode))
    nhwc = lambda x: np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    nchw = lambda x: np.asarray(x).transpose(0, 3, 1, 2)
    posterior, enc_first, enc_steady = run.time_ours(lambda: (lambda q: (q.mean, q.logvar))(encode(params, nhwc(mel))))
    decoded, dec_first, dec_steady = run.time_ours(lambda: decode(params, nhwc(latent)))
    return [
        compare("vae", "encode: posterior mean", nchw(posterior[0]), ref_mean, encode_torch_s, enc_first,
                enc_steady, params_m),
        compare("vae", "encode: posterior logvar", nchw(posterior[1]), ref_logvar, encode_torch_s, enc_first,
                enc_steady, params_m),
        compare("vae", "decode: mel", nchw(decoded), ref_decoded, decode_torch_s, dec_first, dec_steady, params_m),
    ]


def check_vocoder(run, ref, folder, params_m, rng):
    import jax
    import numpy as np

    from audioldm2_jax import components
    from audioldm2_jax.models.vocoder import HifiGanVocoder

    mel = rng.standard_normal((1, 1024, 64)).astype(np.float32)
    expected, torch_s = run.time_torch(lambda: ref(run.to_torch(mel)))
    config, params, _ = components.load("vocoder", folder)
    assert config.output_length(1024) == 163872
    apply = jax.jit(HifiGanVocoder(config).apply)
    ours, first, steady = run.time_ours(lambda: apply({"params": params}, mel))
    return [compare("vocoder", "waveform", ours, expected, torch_s, first, steady, params_m)]


def check_t5(run, ref, folder, params_m, rng):
    import jax
    import numpy as np

    from audioldm2_jax import components
    from audioldm2_jax.models.t5 import T5EncoderModel

    mask = padded_mask([32, 20, 7], 32)
    ids = rng.integers(3, 32128, size=mask.shape)
    ids[np.arange(3), mask.sum(1) - 1] = 1  # </s> ends every prompt
    ids[mask == 0] = 0  # <pad>
    expected, torch_s = run.time_torch(
        lambda: ref(input_ids=run.to_torch(ids), attention_mask=run.to_torch(mask)).last_hidden_state)
    config, params, _ = components.load("t5", folder)
    apply = jax.jit(T5EncoderModel(config).apply)
    ours, first, steady = run.time_ours(lambda: apply({"params": params}, ids.astype(np.int32),
                                                      mask.astype(np.int32)))
    return [compare("t5", "last hidden state", ours, expected, torch_s, first, steady, params_m)]


def check_clap(run, ref, folder, params_m, rng):
    import jax
    import numpy as np

    from audioldm2_jax import components
    from audioldm2_jax.models.clap import ClapModel

    mask = padded_mask([24, 13, 6], 24)
    ids = rng.integers(3, 50265, size=mask.shape)
    ids[:, 0] = 0  # <s>
    ids[np.arange(3), mask.sum(1) - 1] = 2  # </s>
    ids[mask == 0] = 1  # <pad>
    features = (rng.standard_normal((1, 1, 1001, 64)) * 3.0 - 20.0).astype(np.float32)

    ref_text, text_torch_s = run.time_torch(lambda: ref.get_text_features(
        run.to_torch(ids), attention_mask=run.to_torch(mask)).pooler_output)
    ref_audio, audio_torch_s = run.time_torch(lambda: ref.get_audio_features(run.to_torch(features)).pooler_output)

    config, params, _ = components.load("clap", folder)
    model = ClapModel(config)
    text = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m, method="get_text_features"))
    audio = jax.jit(lambda p, f: model.apply({"params": p}, f, method="get_audio_features"))
    ours_text, text_first, text_steady = run.time_ours(lambda: text(params, ids.astype(np.int32),
                                                                     mask.astype(np.int32)))
    ours_audio, audio_first, audio_steady = run.time_ours(lambda: audio(params, features))
    return [compare("clap", "text embeds (L2-normed)", ours_text, ref_text, text_torch_s, text_first, text_steady,
                    params_m),
            compare("clap", "audio embeds (L2-normed)", ours_audio, ref_audio, audio_torch_s, audio_first,
                    audio_steady, params_m)]


def check_gpt2(run, ref, folder, params_m, rng):
    import types

    import numpy as np
    import transformers
    from diffusers.pipelines.audioldm2.pipeline_audioldm2 import AudioLDM2Pipeline

    from audioldm2_jax import components
    from audioldm2_jax.models.gpt2 import GPT2Model, generate_loa

    config, params, _ = components.load("gpt2", folder)
    steps = config.max_new_tokens
    embeds = rng.standard_normal((1, 37, 768)).astype(np.float32)
    mask = np.ones((1, 37), np.int64)
    mask[0, 24:36] = 0  # padding inside the T5 stream, before its EOS embedding

    # diffusers' generation loop needs an LM-head model (GPT2Model has no generation API on current transformers):
    # the same weights under GPT2LMHeadModel.
    lm = transformers.GPT2LMHeadModel(ref.config).float().eval()
    lm.transformer.load_state_dict(ref.state_dict())
    lm.to(run.torch_device)
    pipeline = types.SimpleNamespace(language_model=lm)
    expected, torch_s = run.time_torch(lambda: AudioLDM2Pipeline.generate_language_model(
        pipeline, run.to_torch(embeds), max_new_tokens=steps, attention_mask=run.to_torch(mask)))
    del lm
    model = GPT2Model(config)
    ours, first, steady = run.time_ours(lambda: generate_loa(model, params, embeds, mask.astype(np.int32), steps))
    return [compare("gpt2", f"LOA ({steps} generated states)", ours, expected, torch_s, first, steady, params_m)]


def check_projection(run, ref, folder, params_m, rng):
    import jax
    import numpy as np

    from audioldm2_jax import components
    from audioldm2_jax.models.projection import AudioLDM2ProjectionModel

    clap = rng.standard_normal((1, 1, 512)).astype(np.float32)
    t5 = rng.standard_normal((1, 32, 1024)).astype(np.float32)
    clap_mask = np.ones((1, 1), np.int64)
    t5_mask = padded_mask([20], 32)
    (ref_hidden, ref_mask), torch_s = run.time_torch(lambda: (lambda o: (o.hidden_states, o.attention_mask))(ref(
        hidden_states=run.to_torch(clap), hidden_states_1=run.to_torch(t5), attention_mask=run.to_torch(clap_mask),
        attention_mask_1=run.to_torch(t5_mask))))
    config, params, _ = components.load("projection", folder)
    apply = jax.jit(AudioLDM2ProjectionModel(config).apply)
    (hidden, mask), first, steady = run.time_ours(lambda: apply({"params": params}, clap, t5, clap_mask, t5_mask))
    np.testing.assert_array_equal(mask, ref_mask, err_msg="projection: attention mask")
    return [compare("projection", "hidden states (mask equal)", hidden, ref_hidden, torch_s, first, steady,
                    params_m)]


CHECKS = {"unet": check_unet, "vae": check_vae, "vocoder": check_vocoder, "gpt2": check_gpt2, "t5": check_t5,
          "clap": check_clap, "projection": check_projection}
assert set(CHECKS) == set(COMPONENTS)


# ----------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------


def run_component(name: str, run: Runner, workdir: Path | None, config_dir) -> tuple[list[Row], float]:
    """Builds, saves, converts and compares one component; returns its rows and the build + save seconds."""
    import numpy as np

    temporary = workdir is None
    folder = Path(tempfile.mkdtemp(prefix=f"parity_{name}_")) if temporary else workdir / name
    try:
        start = time.perf_counter()
        ref, _ = save_reference(name, folder, seed=SEED, config_dir=config_dir)
        build_s = time.perf_counter() - start
        params_m = count_params_m(ref)
        if abs(params_m - PUBLISHED_PARAMS_M[name]) > 0.06:  # published counts are rounded to 0.1M
            raise AssertionError(f"{name}: built {params_m:.2f}M parameters, the published model has "
                                 f"{PUBLISHED_PARAMS_M[name]}M: the config was misread")
        ref.to(run.torch_device)
        rows = CHECKS[name](run, ref, folder, params_m, np.random.default_rng(SEED))
        del ref
        return rows, build_s
    finally:
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
        gc.collect()
        run.jax.clear_caches()
        if run.device == "cuda":
            run.torch.cuda.empty_cache()


def fmt_s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}"


def table(rows: list[Row]) -> str:
    lines = ["| component | output | shape | params (M) | scale max\\|ref\\| | max abs err | err / scale | "
             "PyTorch s | ours s (1st call, incl. compile) | ours s (2nd call) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        flag = "" if r.ok else " (> 1e-4)"
        lines.append(f"| {r.component} | {r.output} | {list(r.shape)} | {r.params_m:.2f} | {r.scale:.3g} | "
                     f"{r.max_abs_err:.2e} | {r.rel_err:.2e}{flag} | {fmt_s(r.torch_s)} | {fmt_s(r.ours_first_s)} | "
                     f"{fmt_s(r.ours_s)} |")
    return "\n".join(lines)


def environment(device: str) -> dict:
    import diffusers
    import flax
    import jax
    import numpy as np
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = dict(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"), python=platform.python_version(),
                jax=jax.__version__, flax=flax.__version__, torch=torch.__version__,
                transformers=transformers.__version__, diffusers=diffusers.__version__, numpy=np.__version__,
                cpu=f"{cpu}, {os.cpu_count()} logical cores", torch_threads=torch.get_num_threads(),
                jax_devices=str(jax.devices()))
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--components", default=",".join(COMPONENTS),
                        help=f"comma-separated subset of {','.join(COMPONENTS)} (default: all, in that order)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the saved references go (kept, one folder per component); default: a "
                             "temporary folder per component, removed after it")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--config-dir", default=None, help="folder of the audioldm2-base config files "
                        "(default: audioldm2_jax/configs/published/audioldm2-base, "
                        "else /work/shared/reference/audioldm2-base)")
    parser.add_argument("--no-second-call", action="store_true", help="time only the first (compiling) call of ours")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows and the environment here")
    args = parser.parse_args(argv)

    names = [n.strip() for n in args.components.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        parser.error(f"unknown components {unknown}; expected a subset of {','.join(COMPONENTS)}")
    if args.device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()  # save_pretrained's per-shard bars would bury the results
    # fp32 parity: true fp32 matmuls and convolutions on both sides (no TF32 on GPUs; no-ops on CPUs).
    jax.config.update("jax_default_matmul_precision", "highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)

    run = Runner(args.device, second_call=not args.no_second_call)
    env = environment(args.device)
    config_dir = reference_dir(args.config_dir)
    print(f"configs: {config_dir}")
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()), flush=True)
    rows: list[Row] = []
    total = time.perf_counter()
    for name in names:
        start = time.perf_counter()
        new_rows, build_s = run_component(name, run, args.workdir, config_dir)
        rows.extend(new_rows)
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        for r in new_rows:
            print(f"  {r.component:10s} {r.output:28s} {str(list(r.shape)):18s} scale {r.scale:9.3g}  "
                  f"err {r.max_abs_err:.2e}  rel {r.rel_err:.2e}{'' if r.ok else '  > 1e-4'}  torch "
                  f"{fmt_s(r.torch_s)} s  ours {fmt_s(r.ours_first_s)} s / {fmt_s(r.ours_s)} s", flush=True)
        print(f"[{name}] done in {time.perf_counter() - start:.1f} s (build + save {build_s:.1f} s), "
              f"peak RSS so far {peak_gib:.1f} GiB; weights: {PERTURBATIONS[name]}", flush=True)
    print(f"\ntotal {time.perf_counter() - total:.1f} s, device {args.device}\n")
    print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(dict(environment=env, command=" ".join(sys.argv),
                                             rows=[dataclasses.asdict(r) for r in rows]), indent=1))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
