"""Held-out evaluation during training: the split (a hash of each clip's identity, disjoint from training), the fixed
draws (stratified timesteps, per-clip noise, the same in any batch) against diffusers' noising, the LDM's held-out
loss recomputed from its pieces over two batches, every stage's held-out values, the loop logging eval/<name>
identically in a cut-and-resumed run, and the generation metrics' clips."""

from __future__ import annotations

import hashlib
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import train_fixtures as testing
from reference_init import random_extractor_params, save_pth
from diffusers import DDPMScheduler

from audioldm2_jax import components
from audioldm2_jax.audio.io import read_audio
from audioldm2_jax.convert import vggish as vggish_convert
from audioldm2_jax.data.pipeline import make_dataset
from audioldm2_jax.data.sources import ManifestSource
from audioldm2_jax.data.split import split_held_out
from audioldm2_jax.diffusion import NoiseSchedule, fixed_draw_errors, stratified_timesteps
from audioldm2_jax.models.vae import AutoencoderKL
from audioldm2_jax.models.vggish import VGGish, vggish_dummy_inputs
from audioldm2_jax.pipeline import AudioLDM2Pipeline
from audioldm2_jax.train import config as config_lib
from audioldm2_jax.train import held_out, held_out_metrics, loop
from audioldm2_jax.train.loop import Trainer, data_config
from audioldm2_jax.train.metrics import MetricWriter, read_jsonl

GOLDEN = (math.sqrt(5) - 1) / 2


def _manifest(path, names):
    path.write_text("".join(json.dumps({"audio": f"/clips/{n}.wav", "caption": n}) + "\n" for n in names))
    return ManifestSource(path)


def test_the_split_holds_out_the_smallest_identity_hashes_whatever_the_order(tmp_path):
    names = [f"clip{i:03d}" for i in range(40)]
    source = _manifest(tmp_path / "a.jsonl", names)
    train, held = split_held_out(source, 0.1, 100, seed=3)
    paths = lambda split: {source.clip_identity(i) for i in split.indices}  # noqa: E731
    # the 4 (= ceil(0.1 * 40)) paths with the smallest blake2b(seed:path), computed here from the definition
    by_hash = sorted(names, key=lambda n: hashlib.blake2b(f"3:/clips/{n}.wav".encode(), digest_size=8).digest()[::-1])
    assert paths(held) == {f"/clips/{n}.wav" for n in by_hash[:4]}
    assert paths(train) | paths(held) == {f"/clips/{n}.wav" for n in names} and not paths(train) & paths(held)
    # a reordered manifest holds out the same clips; another seed others; max_clips caps the count
    reordered = _manifest(tmp_path / "b.jsonl", names[::-1])
    assert {reordered.clip_identity(i) for i in split_held_out(reordered, 0.1, 100, seed=3)[1].indices} == paths(held)
    assert paths(split_held_out(source, 0.1, 100, seed=4)[1]) != paths(held)
    assert len(split_held_out(source, 0.1, 2, seed=3)[1]) == 2
    assert held[0]["path"] == source[int(held.indices[0])]["path"]
    with pytest.raises(ValueError, match="both need at least one clip"):
        split_held_out(_manifest(tmp_path / "c.jsonl", names[:1]), 0.5, 100)  # nothing left to train on


def test_stratified_timesteps_and_fixed_draws_match_diffusers_noising():
    clips = jnp.arange(50, dtype=jnp.int32)
    t = np.asarray(stratified_timesteps(clips, 4, 1000))
    expected = np.floor((np.arange(4)[None] + np.mod(np.arange(50)[:, None] * GOLDEN, 1.0)) * 250)
    assert np.abs(t - expected).max() <= 1  # the offset is kept to 24 bits
    assert (t // 250 == np.arange(4)[None]).all()  # one draw per stratum per clip
    assert t[1].tolist() == [154, 404, 654, 904]  # floor((k + 0.618...) * 250)

    config = dict(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear")
    key = held_out.eval_key(7)  # threefry: the conftest makes unsafe_rbg the default, whose vmap draws differ
    x0 = jax.random.normal(jax.random.key(1), (3, 4, 2, 2))
    ids = jnp.asarray([5, 11, 2], jnp.int32)
    model_fn = lambda x, t: 0.5 * x + 1e-3 * t[:, None, None, None]  # noqa: E731
    for prediction_type in ("epsilon", "v_prediction"):
        schedule = NoiseSchedule.from_diffusers(dict(config, prediction_type=prediction_type))
        errors, timesteps = fixed_draw_errors(schedule, model_fn, x0, ids, key, 2)
        reference = DDPMScheduler(**config, prediction_type=prediction_type)
        for row, clip in enumerate([5, 11, 2]):
            for k in range(2):
                noise = jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, clip), k), (4, 2, 2))
                t_ = torch.tensor([int(timesteps[row, k])])
                x = torch.from_numpy(np.array(x0[row:row + 1]))
                eps = torch.from_numpy(np.asarray(noise)[None])
                x_t = reference.add_noise(x, eps, t_)
                target = eps if prediction_type == "epsilon" else reference.get_velocity(x, eps, t_)
                pred = 0.5 * x_t + 1e-3 * t_.float()
                want = float(torch.mean((pred - target) ** 2))
                assert abs(float(errors[row, k]) - want) <= 1e-5 * want, (prediction_type, clip, k)
    # the draws follow the clip, not its row: a permuted batch gives the permuted errors
    order = jnp.asarray([2, 0, 1])
    permuted, _ = fixed_draw_errors(schedule, model_fn, x0[order], ids[order], key, 2)
    np.testing.assert_allclose(np.asarray(permuted), np.asarray(errors)[np.asarray(order)], rtol=1e-6)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    return testing.caption_tokenizers(tmp_path_factory.mktemp("tokenizers"))


def _ldm_config(tokenizers, **overrides):
    c = testing.micro_config("ldm", tokenizers)
    c.data.procedural_clips = 16
    testing.override(c, **{"eval.every_steps": 4, "eval.held_out_fraction": 0.5, "eval.max_clips": 8,
                           "eval.timesteps_per_clip": 2, **overrides})
    return c


def test_ldm_held_out_loss_is_the_mean_over_clips_and_draws_recomputed_from_its_pieces(tokenizers, tmp_path):
    c = _ldm_config(tokenizers)
    trainer = Trainer.build(c, tmp_path, devices=jax.devices()[:1])
    _, held = held_out.split_sources(c)
    init_key, _ = testing.run_keys(c)
    frozen = trainer.init_frozen(init_key)
    state = trainer.init_state(init_key)
    evaluator = held_out.HeldOutEvaluator(trainer, held)
    extras = trainer.initial_extras(frozen, trainer.place_batch(evaluator.batches[0]), init_key)
    values = evaluator(state.params, frozen, extras)
    assert evaluator.clips == 8 and len(evaluator.batches) == 2
    assert set(values) == {"loss", "loss_t0-499", "loss_t500-999"}

    # Recomputed from the pieces: VAE posterior mode x scale, the clip's LOA at lambda 4, T5 of its caption, the
    # UNet's epsilon against diffusers' noising at the clip's two stratified timesteps and fixed noise.
    stage = trainer.stage
    unet = state.params["unet"]["unet"]
    reference = DDPMScheduler(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195,
                              beta_schedule="scaled_linear")

    @jax.jit
    def conditions(batch):
        z = stage.ldm.vae.apply({"params": frozen["vae"]}, batch["log_mel"][..., None],
                                method=AutoencoderKL.encode).mode() * extras["latent_scale"]
        loa = stage.ldm.loa(frozen["audiomae"], batch["fbank"], 4)
        return z, loa, stage.ldm.t5.apply({"params": frozen["t5"]}, batch["t5_ids"], batch["t5_mask"])

    predict = jax.jit(lambda x, t, loa, t5, mask: stage.ldm.unet.apply({"params": unet}, x, t, loa, None, t5, mask))
    key = held_out.eval_key(int(c.eval.seed))
    errors = []
    for host in evaluator.batches:
        batch = jax.tree.map(jnp.asarray, host)
        z, loa, t5 = conditions(batch)
        for k in range(2):
            x_t, noises, ts = [], [], []
            for row, clip in enumerate(np.asarray(batch["eval_index"])):
                t = int(stratified_timesteps(jnp.asarray([clip]), 2, 1000)[0, k])  # checked against the formula above
                noise = np.asarray(jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, int(clip)), k),
                                                     z.shape[1:]))
                x_t.append(reference.add_noise(torch.from_numpy(np.array(z[row:row + 1])),
                                               torch.from_numpy(noise[None]), torch.tensor([t])).numpy()[0])
                noises.append(noise)
                ts.append(t)
            pred = predict(jnp.asarray(np.stack(x_t)), jnp.asarray(ts, jnp.int32), loa, t5, batch["t5_mask"])
            errors += [(k, float(e)) for e in jnp.mean((pred - jnp.asarray(np.stack(noises))) ** 2, axis=(1, 2, 3))]
    by_band = [np.mean([e for k, e in errors if k == band]) for band in (0, 1)]
    np.testing.assert_allclose([values["loss"], values["loss_t0-499"], values["loss_t500-999"]],
                               [np.mean([e for _, e in errors])] + by_band, rtol=2e-5)


def test_training_never_sees_a_held_out_clip(tokenizers):
    c = _ldm_config(tokenizers)
    train, held = held_out.split_sources(c)
    held_paths = {held[i]["path"] for i in range(len(held))}
    iterator = make_dataset(data_config(c), seed=0, source=train)
    seen = {str(p) for _ in range(6) for p in next(iterator)["path"]}  # three epochs of the 8 training clips
    assert len(held_paths) == 8 and len(seen) == 8 and not seen & held_paths


def _smoke_config(**overrides):
    c = config_lib.load_config_file("configs/smoke.py")
    c.log.progress_bar = False
    c.log.tensorboard = False
    testing.override(c, **{"num_steps": 10, "eval.every_steps": 5, "eval.held_out_fraction": 0.25, **overrides})
    return c


def test_the_loop_logs_held_out_losses_and_a_resumed_run_repeats_them(tmp_path):
    summary = Trainer.build(_smoke_config(), tmp_path / "whole").run()
    rows = {r["step"]: r for r in read_jsonl(tmp_path / "whole" / "metrics.jsonl") if "eval/denoiser/loss" in r}
    assert sorted(rows) == [5, 10]
    assert summary["eval"] == {k[len("eval/"):]: v for k, v in rows[10].items() if k.startswith("eval/")}
    assert set(summary["eval"]) == {"denoiser/loss", "probe/loss"}
    assert rows[10]["eval/denoiser/loss"] != rows[5]["eval/denoiser/loss"]

    cut = Trainer.build(_smoke_config(), tmp_path / "cut").run(stop_at_step=7)
    assert cut["final_step"] == 7
    resumed = Trainer.build(_smoke_config(), tmp_path / "cut").run()
    assert resumed["resumed_from"] == 7
    assert resumed["eval"] == summary["eval"]  # exactly: the same parameters, batches and draws


def test_bad_eval_settings_are_named(tmp_path):
    for key, value, message in (("eval.every_steps", -1, "eval.every_steps"),
                                ("eval.held_out_fraction", 1.0, "eval.held_out_fraction"),
                                ("eval.timesteps_per_clip", 0, "eval.timesteps_per_clip")):
        with pytest.raises(config_lib.ConfigError, match=message):
            config_lib.validate(_smoke_config(**{key: value}), 1, 1)
    with pytest.raises(config_lib.ConfigError, match="the held-out split has 4 clips and eval.batch_size=8"):
        Trainer.build(_smoke_config(**{"eval.max_clips": 4, "eval.batch_size": 8}), tmp_path).run()


HELD_OUT_NAMES = {
    "vae": {"loss", "rec_l1", "kl"},
    "vocoder": {"loss"},
    "audiomae": {"loss"},
    "gpt2": {"loss", "loa_cosine"},
    "joint": {"loss", "ldm_loss", "ldm_loss_t0-499", "ldm_loss_t500-999", "ldm_loss_predicted_loa", "gpt2_loss",
              "loa_cosine"},
}


@pytest.mark.parametrize("stage", sorted(HELD_OUT_NAMES))
def test_every_stage_evaluates_its_held_out_losses(stage, tokenizers, tmp_path):
    c = testing.micro_config(stage, tokenizers)
    c.data.procedural_clips = 12
    discriminators = {"vae": dict(base_channels=8, num_layers=2, norm_groups=4),
                      "vocoder": dict(periods=(2,), period_channels=(4, 8), num_scales=1, scale_channels=(4, 8, 8),
                                      scale_kernel_sizes=(5, 5, 3), scale_strides=(1, 2, 1), scale_groups=(1, 2, 1))}
    testing.override(c, **{"eval.every_steps": 4, "eval.held_out_fraction": 0.34, "eval.timesteps_per_clip": 2,
                           "vae.disc_start": 1, "model.discriminator": discriminators.get(stage, {})})
    trainer = Trainer.build(c, tmp_path, devices=jax.devices()[:1])
    init_key, _ = testing.run_keys(c)
    frozen, state = trainer.init_frozen(init_key), trainer.init_state(init_key)
    evaluator = held_out.HeldOutEvaluator(trainer, held_out.split_sources(c)[1])
    values = evaluator(state.params, frozen, state.extras)
    assert set(values) == HELD_OUT_NAMES[stage] and all(np.isfinite(v) for v in values.values()), values
    assert evaluator(state.params, frozen, state.extras) == values  # fixed draws: the same value every time
    if stage == "vae":  # from the posterior's mode, against the decoder's output computed here
        mel = jnp.asarray(evaluator.batches[0]["log_mel"])[..., None]
        recon, posterior = trainer.stage.vae.apply({"params": state.params["vae"]["vae"]}, mel, None)
        assert values["rec_l1"] == pytest.approx(float(jnp.mean(jnp.abs(mel - recon))), rel=1e-5)
        assert values["kl"] == pytest.approx(float(jnp.mean(posterior.kl())), rel=1e-5)
        assert values["loss"] == pytest.approx(float(jnp.sum(jnp.abs(mel - recon))) / mel.shape[0]
                                               + 1e-6 * values["kl"], rel=1e-5)


@pytest.fixture(scope="module")
def random_vggish(tmp_path_factory):
    """A VGGish weights file in torchvggish's layout, random (the published one cannot be downloaded here)."""
    params = random_extractor_params(VGGish(), vggish_dummy_inputs(), seed=0)
    return save_pth(vggish_convert.to_torch(params), tmp_path_factory.mktemp("vggish") / "vggish-random.pth")


def test_generation_metrics_score_clips_generated_from_held_out_captions(tokenizers, random_vggish, tmp_path):
    c = testing.micro_config("joint", tokenizers)
    vocoder_config = config_lib.model_config(c, "vocoder")
    vocoder = jax.device_get(nn.unbox(components.init_fn("vocoder", vocoder_config)(jax.random.key(7))))
    vocoder["conv_post"]["kernel"] = vocoder["conv_post"]["kernel"] * 300.0  # audible, not HiFi-GAN's ~1e-6
    components.save("vocoder", tmp_path / "vocoder", vocoder_config, vocoder)
    c.init.vocoder = str(tmp_path / "vocoder")
    c.data.procedural_clips = 12
    testing.override(c, **{"eval.every_steps": 4, "eval.held_out_fraction": 0.34, "eval.metrics_every_steps": 4,
                           "eval.num_generated": 3, "eval.inference_steps": 2, "eval.vggish": random_vggish})
    trainer = Trainer.build(c, tmp_path / "run", devices=jax.devices()[:1])
    init_key, _ = testing.run_keys(c)
    frozen, state = trainer.init_frozen(init_key), trainer.init_state(init_key)
    evaluator = held_out.HeldOutEvaluator(trainer, held_out.split_sources(c)[1])
    metrics = held_out_metrics.HeldOutMetrics(trainer, evaluator.references)
    assert metrics.metrics == ("fad",)  # FD / KL / IS / CLAP have no network configured
    writer = MetricWriter(tmp_path / "run", tensorboard=False)
    values = loop._generation_metrics(metrics, state, frozen, 4, writer)
    writer.close()
    assert set(values) == {"fad"} and np.isfinite(values["fad"]) and values["fad"] > 0
    assert read_jsonl(tmp_path / "run" / "metrics.jsonl")[-1] == {"step": 4, "eval/fad": values["fad"]}
    root = tmp_path / "run" / "eval"
    assert json.loads((root / "00000004" / "metrics.json").read_text())["metrics"]["fad"]["value"] == values["fad"]
    # the references are the held-out clips; the generated clips are what the exported model makes from their
    # captions with seeds 0, 1, 2
    prompts = json.loads((root / "reference" / "prompts.json").read_text())
    assert list(prompts) == ["heldout_0000", "heldout_0001", "heldout_0002"]
    pipeline = AudioLDM2Pipeline.from_pretrained(root / "model")
    expected = pipeline(list(prompts.values()), num_inference_steps=2, seed=[0, 1, 2])
    for i, name in enumerate(prompts):
        caption, wave = evaluator.references[i]
        assert prompts[name] == caption
        np.testing.assert_allclose(read_audio(root / "reference" / f"{name}.wav")[0], wave, atol=1 / 32768)
        np.testing.assert_allclose(read_audio(root / "00000004" / "generated" / f"{name}.wav")[0], expected[i],
                                   atol=1 / 32768)

    c.eval.vggish = ""
    with pytest.raises(config_lib.ConfigError, match="none of eval.metrics"):
        held_out_metrics.HeldOutMetrics(trainer, evaluator.references)
    c.eval.vggish = random_vggish
    c.init.vocoder = ""
    with pytest.raises(config_lib.ConfigError, match="set init.vocoder"):
        held_out_metrics.HeldOutMetrics(trainer, evaluator.references)


def test_a_named_held_out_set_leaves_the_training_data_whole(tmp_path):
    train_manifest = _manifest(tmp_path / "train.jsonl", [f"t{i}" for i in range(6)])
    _manifest(tmp_path / "held.jsonl", ["h0", "h1", "h2"])
    c = _smoke_config(**{"data.source": "manifest", "data.path": train_manifest.manifest,
                         "eval.path": str(tmp_path / "held.jsonl")})
    train, held = held_out.split_sources(c)
    assert [train.clip_identity(i) for i in range(len(train))] == [f"/clips/t{i}.wav" for i in range(6)]
    assert [held.clip_identity(i) for i in range(len(held))] == ["/clips/h0.wav", "/clips/h1.wav", "/clips/h2.wav"]
    for overrides, message in (({"eval.tfds_split": "test"}, "not both"),
                               ({"data.source": "procedural"}, "eval.path names held-out files"),
                               ({"eval.path": "", "eval.tfds_split": "test"}, "names a TFDS split")):
        with pytest.raises(config_lib.ConfigError, match=message):
            held_out.split_sources(testing.override(c.copy_and_resolve_references(), **overrides))
    assert held_out.split_sources(_smoke_config(**{"eval.every_steps": 0}))[1] is None  # off: nothing held out
