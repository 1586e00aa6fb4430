"""Input pipeline throughput: clips per second per CPU core, against the rate one accelerator consumes.

Builds a corpus of ~11 s clips in the formats text-audio corpora come in (44.1 kHz stereo FLAC, 48 kHz WAV,
32 kHz Ogg Vorbis, 16 kHz WAV), writes a manifest, converts it with ``prepare`` into ArrayRecord shards, then
times, on one core, each stage of turning a file into a training example (10.24 s crop: waveform, 64-bin log-mel
``[1024, 64]``, AudioMAE fbank ``[1024, 128]``):

  manifest:      decode -> crop (at the source rate) -> mono -> resample to 16 kHz -> normalise -> mel -> fbank
  array_record:  read + decode a record (already 16 kHz int16)  -> crop -> normalise -> mel -> fbank

and the end-to-end grain pipeline (``make_dataset``, batches of 8), with the features computed on the host or
left to the device (``compute_log_mel=False, compute_fbank=False``). Rates are clips per CPU-second (process CPU
time, all threads), i.e. per core; wall-clock rates are printed beside them.

What one accelerator consumes is estimated without one: XLA's cost analysis of the lowered UNet training step
(fwd + bwd + AdamW at the base config) gives FLOPs per clip; at ``--effective-tflops`` sustained (default 300,
~30 % of an H100's bf16 peak) that is the clips per second the input must deliver, and the host cores it takes.

``--accelerator`` measures it instead: it times, on the default JAX backend, what one accelerator consumes: a
training step of the LDM's UNet at the base config (fwd + bwd + AdamW, bf16 compute, fp32 params; 10.24 s clips = latents
``[B, 256, 16, 8]``, LOA ``[B, 8, 768]``, T5 ``[B, 32, 1024]``) gives clips per second = B / step time; and the
device-side front end (``log_mel_spectrogram_jnp`` + ``audiomae_input_jnp``), the alternative to computing
features on the host. The UNet alone is the fastest consumer a real LDM step can be (the full step also runs
the VAE encoder, AudioMAE, GPT-2 and the frozen text encoders), so it bounds the input rate needed from above.

    python bench/input_pipeline.py                       # CPU stages + pipeline, 24 clips
    python bench/input_pipeline.py --workers 2           # also the pipeline with 2 grain worker processes
    python bench/input_pipeline.py --no-cpu --accelerator --batch 16   # on a GPU / TPU host; compiling the
                                                         # UNet step takes minutes: give it 10
    python bench/input_pipeline.py --clips 8 --quick     # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from audioldm2_jax.audio import fbank as fbank_lib  # noqa: E402
from audioldm2_jax.audio import mel as mel_lib  # noqa: E402

# The CPU part needs the data stack (soundfile, grain, librosa); the accelerator part only JAX and the model, so
# it also runs on a machine that has nothing else (an accelerator image without the audio packages).

CLIP_SAMPLES = 163840  # 10.24 s at 16 kHz: 1024 mel frames
FORMATS = (  # (extension, sample rate, channels, soundfile subtype): what AudioCaps / WavCaps files look like
    ("flac", 44100, 2, "PCM_16"),
    ("wav", 48000, 1, "PCM_16"),
    ("ogg", 32000, 1, "VORBIS"),
    ("wav", 16000, 1, "PCM_16"),
)


def make_corpus(root: Path, count: int, seconds: float = 11.0) -> str:
    """``count`` files cycling through :data:`FORMATS`, content from the procedural generator; returns the
    manifest path."""
    import soundfile

    from audioldm2_jax.audio import io as audio_io
    from audioldm2_jax.data import procedural

    rows = []
    generator = procedural.ProceduralSource(num_clips=count, seed=0, duration=seconds)
    for i in range(count):
        ext, rate, channels, subtype = FORMATS[i % len(FORMATS)]
        record = generator[i]
        wave = audio_io.resample(record["waveform"], 16000, rate)
        if channels == 2:
            wave = np.stack([wave, 0.8 * wave], axis=1)
        name = f"clip{i:04d}.{ext}"
        soundfile.write(root / name, wave, rate, subtype=subtype)
        rows.append({"audio": name, "caption": record["captions"][0]})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(manifest)


class CpuTimer:
    """Per-stage process CPU time and wall time."""

    def __init__(self):
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}

    def run(self, stage: str, fn, *args):
        cpu, wall = time.process_time(), time.perf_counter()
        out = fn(*args)
        self.cpu[stage] = self.cpu.get(stage, 0.0) + time.process_time() - cpu
        self.wall[stage] = self.wall.get(stage, 0.0) + time.perf_counter() - wall
        return out


def time_stages_manifest(source, rng: np.random.Generator) -> CpuTimer:
    from audioldm2_jax.audio import io as audio_io
    from audioldm2_jax.data import transforms

    timer = CpuTimer()
    for entry in source.entries:
        wave, rate = timer.run("decode", audio_io.read_audio, entry.path)
        length = int(np.ceil(CLIP_SAMPLES * rate / 16000)) + 32
        window, _ = timer.run("crop", transforms.random_crop_avoiding_silence, wave, length, rng)
        window = timer.run("mono", transforms.to_mono, window)
        window = timer.run("resample", audio_io.resample, window, rate, 16000)
        clip = timer.run("normalise+pad", lambda w: transforms.pad_or_trim(transforms.normalize_peak(
            w[:CLIP_SAMPLES]), CLIP_SAMPLES), window)
        timer.run("log-mel", mel_lib.log_mel_spectrogram, clip)
        timer.run("fbank", fbank_lib.audiomae_input, clip)
    return timer


def time_stages_array_record(source, rng: np.random.Generator) -> CpuTimer:
    from audioldm2_jax.data import transforms

    timer = CpuTimer()
    for i in range(len(source)):
        record = timer.run("read+decode record", source.__getitem__, i)
        window, _ = timer.run("crop", transforms.random_crop_avoiding_silence, record["waveform"], CLIP_SAMPLES, rng)
        clip = timer.run("normalise+pad", lambda w: transforms.pad_or_trim(transforms.normalize_peak(w),
                                                                           CLIP_SAMPLES), window)
        timer.run("log-mel", mel_lib.log_mel_spectrogram, clip)
        timer.run("fbank", fbank_lib.audiomae_input, clip)
    return timer


def time_pipeline(config: dict, clips: int) -> dict:
    from audioldm2_jax.data import pipeline

    iterator = pipeline.make_dataset(config, 0, 1, seed=0)
    next(iterator)  # start-up (workers, first reads) is not throughput
    cpu, wall = time.process_time(), time.perf_counter()
    seen = 0
    while seen < clips:
        seen += len(next(iterator)["path"])
    result = {"clips": seen, "cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall}
    iterator.close()
    return result


def report_stages(title: str, timer: CpuTimer, count: int) -> dict:
    total_cpu, total_wall = sum(timer.cpu.values()), sum(timer.wall.values())
    host_only = total_cpu - timer.cpu.get("log-mel", 0.0) - timer.cpu.get("fbank", 0.0)
    print(f"\n{title} ({count} clips, one thread)")
    print(f"  {'stage':22s} {'ms/clip (cpu)':>14s} {'share':>7s}")
    for stage, cpu in timer.cpu.items():
        print(f"  {stage:22s} {1000 * cpu / count:14.1f} {cpu / total_cpu:7.0%}")
    rate = count / total_cpu
    print(f"  {'total':22s} {1000 * total_cpu / count:14.1f}    -> {rate:.1f} clips/s per core "
          f"({count / total_wall:.1f} wall)")
    print(f"  {'without mel + fbank':22s} {1000 * host_only / count:14.1f}    -> {count / host_only:.1f} clips/s per "
          "core (features on the device)")
    return {"ms_per_clip": {k: 1000 * v / count for k, v in timer.cpu.items()}, "clips_per_core_s": rate,
            "clips_per_wall_s": count / total_wall, "clips_per_core_s_without_features": count / host_only}


def _unet_training_step(batch: int, tiny: bool):
    """(step function, its abstract inputs) for one UNet training step at the base config (bf16 compute)."""
    import jax
    import jax.numpy as jnp
    import optax

    from audioldm2_jax.models.unet import AudioLDM2UNet, UNetConfig

    reference = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "audioldm2-base" / "unet.json"
    # UNetConfig's defaults are the base checkpoint's (cvssp/audioldm2), for machines without the reference files
    config = UNetConfig.from_diffusers(json.loads(reference.read_text())) if reference.exists() else UNetConfig()
    if tiny:  # a smoke test of this code on a CPU, not a measurement
        import dataclasses

        config = dataclasses.replace(config, block_out_channels=(32,) * 4, layers_per_block=(1,) * 4,
                                     norm_num_groups=8)
    model = AudioLDM2UNet(config, dtype=jnp.bfloat16, param_dtype=jnp.float32)
    optimizer = optax.adamw(1e-4)
    shapes = {"latents": (batch, 256, 16, 8), "loa": (batch, 8, 768), "t5": (batch, 32, 1024)}

    def loss_fn(params, latents, loa, t5):
        timesteps = jnp.full((latents.shape[0],), 500, jnp.int32)
        mask = jnp.ones(t5.shape[:2], jnp.int32)
        noise_pred = model.apply(params, latents, timesteps, loa, None, t5, mask)
        return jnp.mean((noise_pred.astype(jnp.float32) - latents) ** 2)

    def step(params, opt_state, latents, loa, t5):
        loss, grads = jax.value_and_grad(loss_fn)(params, latents, loa, t5)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def init(key):
        latents = jnp.zeros((1,) + shapes["latents"][1:])
        params = model.init(key, latents, jnp.zeros((1,), jnp.int32), jnp.zeros((1, 8, 768)), None,
                            jnp.zeros((1, 32, 1024)), jnp.ones((1, 32), jnp.int32))
        return params, optimizer.init(params)

    return step, init, shapes


def unet_flops_per_clip(tiny: bool = False) -> float:
    """FLOPs of one UNet training step (fwd + bwd + AdamW) per 10.24 s clip, from XLA's cost analysis of the
    lowered step (no compilation, no accelerator needed)."""
    import jax
    import jax.numpy as jnp

    step, init, shapes = _unet_training_step(1, tiny)
    params, opt_state = jax.eval_shape(init, jax.random.PRNGKey(0))
    args = [jax.ShapeDtypeStruct(shapes[k], jnp.float32) for k in ("latents", "loa", "t5")]
    analysis = jax.jit(step).lower(params, opt_state, *args).cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float(analysis["flops"])


def time_accelerator(batch: int, steps: int, tiny: bool = False) -> dict:
    """UNet training step at the base config and the device front end, on the default backend (progress is
    printed with times: compiling the full UNet's step takes minutes)."""
    import jax
    import jax.numpy as jnp

    start = time.perf_counter()

    def progress(what):
        print(f"  [{time.perf_counter() - start:6.1f} s] {what}", flush=True)

    step, init, shapes = _unet_training_step(batch, tiny)
    key = jax.random.PRNGKey(0)
    with jax.default_device(jax.devices("cpu")[0]):  # eager init on the host: no compile of the initialisers
        params, opt_state = init(key)
    params, opt_state = jax.device_put((params, opt_state), jax.devices()[0])
    progress("parameters initialised")
    inputs = [jax.random.normal(key, shapes[k], jnp.float32) for k in ("latents", "loa", "t5")]
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, *inputs).compile()
    progress("training step compiled")
    params, opt_state, loss = compiled(params, opt_state, *inputs)
    loss.block_until_ready()
    times = []
    for _ in range(steps):
        begin = time.perf_counter()
        params, opt_state, loss = compiled(params, opt_state, *inputs)
        loss.block_until_ready()
        times.append(time.perf_counter() - begin)
    step_s = statistics.median(times)
    progress(f"{steps} steps timed")

    try:
        mel_lib.mel_basis()
    except ImportError:  # no librosa here: the basis's values do not change the timing, only its shape matters
        mel_lib.mel_basis = lambda: np.full((mel_lib.N_MELS, mel_lib.N_FFT // 2 + 1), 0.01, np.float32)
    waves = jax.random.normal(key, (batch, CLIP_SAMPLES), jnp.float32) * 0.1
    front = jax.jit(lambda w: (mel_lib.log_mel_spectrogram_jnp(w), fbank_lib.audiomae_input_jnp(w)))
    jax.block_until_ready(front(waves))
    front_times = []
    for _ in range(steps):
        begin = time.perf_counter()
        jax.block_until_ready(front(waves))
        front_times.append(time.perf_counter() - begin)
    front_s = statistics.median(front_times)
    progress("front end timed")
    return {"device": str(jax.devices()[0].device_kind), "batch": batch, "unet_step_s": step_s,
            "unet_clips_per_s": batch / step_s, "front_end_s": front_s, "front_end_clips_per_s": batch / front_s,
            "front_end_share_of_step": front_s / step_s}


def run_cpu(args, results: dict) -> None:
    from audioldm2_jax.data import prepare, sources

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        manifest = make_corpus(root, args.clips)
        print(f"corpus: {args.clips} files of 11 s ({', '.join(f'{e} {r} Hz x{c}' for e, r, c, _ in FORMATS)}) "
              f"in {time.perf_counter() - start:.1f} s")
        info = prepare.prepare(manifest, root / "shards", num_shards=2, log=lambda *_: None)
        print(f"prepare: {info['num_records']} records in {info['seconds']} s "
              f"({info['num_records'] / info['seconds']:.1f} files/s, one process)")
        results["prepare_files_per_s"] = info["num_records"] / info["seconds"]
        manifest_source = sources.ManifestSource(manifest)
        shards = sources.ArrayRecordSource(root / "shards")
        # warm caches (mel basis, librosa import) outside the timings
        mel_lib.log_mel_spectrogram(np.zeros(CLIP_SAMPLES, np.float32))
        fbank_lib.audiomae_input(np.zeros(CLIP_SAMPLES, np.float32))
        results["manifest_stages"] = report_stages("manifest", time_stages_manifest(manifest_source, rng),
                                                   len(manifest_source))
        results["array_record_stages"] = report_stages("array_record", time_stages_array_record(shards, rng),
                                                       len(shards))
        if not args.quick:
            base = {"clip_seconds": 10.24, "global_batch_size": 8, "read_threads": 1, "num_epochs": None}
            runs = [("manifest", {"source": "manifest", "path": manifest}),
                    ("array_record", {"source": "array_record", "path": str(root / "shards")})]
            print("\nend-to-end make_dataset (batches of 8, after the first batch)")
            results["pipeline"] = {}
            for workers in sorted({0, args.workers}):
                for name, extra in runs:
                    for features in ("host", "device"):
                        on_host = features == "host"
                        config = {**base, **extra, "num_workers": workers, "compute_log_mel": on_host,
                                  "compute_fbank": on_host}
                        run = time_pipeline(config, 2 * args.clips)
                        key = f"{name}_features-on-{features}_workers{workers}"
                        results["pipeline"][key] = run
                        # worker processes' CPU time is not the main process's: only wall time means anything
                        per_cpu = f"{run['clips'] / run['cpu_s']:7.1f}" if workers == 0 else "    n/a"
                        print(f"  {key:40s} {per_cpu} clips per CPU-second, "
                              f"{run['clips'] / run['wall_s']:7.1f} clips/s wall")


def report_cores(results: dict, need: float) -> None:
    """Host cores one accelerator needs to be fed at ``need`` clips/s, per source and feature placement."""
    for name in ("manifest_stages", "array_record_stages"):
        if name not in results:
            continue
        stages = results[name]
        print(f"  {name.split('_stages')[0]:13s} host cores per accelerator: "
              f"{need / stages['clips_per_core_s']:5.1f} with mel + fbank on the host, "
              f"{need / stages['clips_per_core_s_without_features']:5.1f} with them on the device")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=24, help="corpus size")
    parser.add_argument("--workers", type=int, default=0, help="also run the pipeline with grain workers")
    parser.add_argument("--accelerator", action="store_true", help="time the UNet step and device front end")
    parser.add_argument("--batch", type=int, default=16, help="per-device batch for --accelerator")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="skip the pipeline runs")
    parser.add_argument("--no-cpu", action="store_true", help="only the accelerator part")
    parser.add_argument("--tiny-unet", action="store_true", help="smoke-test the accelerator part with a tiny UNet")
    parser.add_argument("--no-estimate", action="store_true", help="skip the FLOP-based estimate")
    parser.add_argument("--effective-tflops", type=float, default=300.0,
                        help="sustained bf16 TFLOP/s assumed for the estimate (default: ~30%% of an H100's peak)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()

    results: dict = {"cpu_count": os.cpu_count()}
    if not args.no_cpu:
        run_cpu(args, results)
    if not args.no_estimate:
        flops = unet_flops_per_clip(args.tiny_unet)
        need = args.effective_tflops * 1e12 / flops
        results["estimate"] = {"unet_train_flops_per_clip": flops, "effective_tflops": args.effective_tflops,
                               "clips_per_s_per_accelerator": need}
        print(f"\nestimate: a UNet training step (fwd + bwd + AdamW, base config) costs {flops / 1e9:.0f} GFLOP per "
              f"10.24 s clip (XLA cost analysis); at {args.effective_tflops:.0f} TFLOP/s sustained one accelerator "
              f"consumes {need:.0f} clips/s")
        report_cores(results, need)
    if args.accelerator:
        acc = time_accelerator(args.batch, args.steps, args.tiny_unet)
        results["accelerator"] = acc
        print(f"\naccelerator: {acc['device']}, UNet base training step at batch {acc['batch']}: "
              f"{1000 * acc['unet_step_s']:.1f} ms -> {acc['unet_clips_per_s']:.1f} clips/s needed")
        print(f"  device front end (mel + fbank) for the batch: {1000 * acc['front_end_s']:.2f} ms "
              f"({acc['front_end_share_of_step']:.1%} of the step), {acc['front_end_clips_per_s']:.0f} clips/s")
        report_cores(results, acc["unet_clips_per_s"])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
