"""IsoFLOP sweep planning, the runners and the results table (audioldm2_jax/scaling/sweep.py, runner.py, report.py),
with measured models replaced by stated figures (the FLOP counting itself is configs/sizes.py's, tested in
tests/test_configs.py) and the trainer by a stand-in that writes what the trainer writes."""

import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from audioldm2_jax.configs import scaling_demo
from audioldm2_jax.scaling import report as report_lib
from audioldm2_jax.scaling import runner, sweep

# (params, GFLOP per example) of three made-up widths
MODELS = {0.5: (1.0e6, 1.3), 1.0: (4.0e6, 5.0), 2.0: (16.0e6, 21.0)}


def fake_measure(spec, value):
    params, gflop = MODELS[value]
    return dict(params=params, flops_per_example=gflop * 1e9, width=float(value))


def spec(tmp_path, **over):
    base = dict(name="t", config="configs/scaling_demo.py", stage="ldm", options={"root": "R"}, axis="width",
                models=[0.5, 1.0, 2.0], budgets=[1e14, 1e13], batch_size=[8, 7, 9],
                learning_rate=dict(base=1e-3, reference_width=1.0, exponent=-0.5), root=str(tmp_path),
                overrides={"checkpoint.every_steps": 50})
    return {**base, **over}


def test_plan_derives_steps_within_tolerance(tmp_path):
    runs, skipped = sweep.plan(spec(tmp_path), measure=fake_measure)
    assert [r["budget"] for r in runs] == [1e13] * 3 + [1e14] * 3  # budgets in order
    for r in runs:
        gflop = MODELS[r["value"]][1]
        assert r["compute"] == pytest.approx(r["steps"] * r["batch"] * gflop * 1e9, rel=1e-12)
        assert abs(r["compute"] / r["budget"] - 1) <= 0.01
        assert r["examples"] == r["steps"] * r["batch"]
        assert r["learning_rate"] == pytest.approx(1e-3 * r["value"] ** -0.5, rel=1e-12)  # EDM2's rule
        assert r["name"] == f"isoflop-{sweep.format_budget(r['budget'])}-w{r['value']:g}-b{r['batch']}-s{r['steps']}"
    # the first batch size of the list whose rounded step count lands within 1 % of the budget
    big = next(r for r in runs if r["budget"] == 1e13 and r["value"] == 2.0)
    expected = next((b, round(1e13 / (21e9 * b))) for b in (8, 7, 9)
                    if abs(round(1e13 / (21e9 * b)) * b * 21e9 / 1e13 - 1) <= 0.01)
    assert (big["batch"], big["steps"]) == expected
    assert skipped == []
    argv = next(r for r in runs if r["value"] == 0.5)["argv"]
    assert argv[:3] == ["python", "-m", "audioldm2_jax.train.main"]
    assert "--config=configs/scaling_demo.py:ldm,root=R,width=0.5" in argv
    assert "--config.checkpoint.every_steps=50" in argv
    assert any(a.startswith("--config.eval.every_steps=") for a in argv)


def test_plan_leaves_out_what_misses_the_budget(tmp_path):
    runs, skipped = sweep.plan(spec(tmp_path, budgets=[1.04e11], batch_size=8, min_steps=5), measure=fake_measure)
    # 1.04e11 / (1.3e9 x 8) = 10 steps exactly; / (5e9 x 8) = 2.6 -> 3 (15 % over); / (21e9 x 8) = 0.62 -> 1 (62 %)
    assert {s["model"] for s in skipped} == {"w1", "w2"}
    assert [r["model"] for r in runs] == ["w0.5"] and runs[0]["steps"] == 10
    assert runs[0]["warmup"] == 1  # warmup_fraction 0.1 of 10 steps
    fixed, _ = sweep.plan(spec(tmp_path, budgets=[1.04e11, 1e14], batch_size=8, min_steps=5, warmup_steps=8),
                          measure=fake_measure)
    assert [r["warmup"] for r in fixed] == [5] + [8] * 3  # the same in every run, at most half its steps
    # a batch list falls back to a smaller batch when the first lands on the budget in fewer than min_steps steps:
    # 1.04e11 / (1.3e9 x 8) = 10 < 12 steps; / (1.3e9 x 4) = 20 steps, exactly on the budget
    fallback, _ = sweep.plan(spec(tmp_path, budgets=[1.04e11], batch_size=[8, 4], min_steps=12), measure=fake_measure)
    assert [(r["model"], r["batch"], r["steps"]) for r in fallback] == [("w0.5", 4, 20)]


def test_spec_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="one knob at a time"):
        sweep.load_spec(spec(tmp_path, axis="width_and_depth"))
    with pytest.raises(ValueError, match="unknown fields \\['budget'\\]"):
        sweep.load_spec(dict(spec(tmp_path), budget=1))
    with pytest.raises(ValueError, match="presets \\['huge'\\]"):
        sweep.load_spec(spec(tmp_path, axis="preset", models=["s", "huge"]))
    with pytest.raises(ValueError, match="batch_size"):
        sweep.load_spec(spec(tmp_path, batch_size=0))


def test_budget_names():
    assert sweep.format_budget(3e12) == "3e12"
    assert sweep.format_budget(2.5e13) == "2.5e13"
    assert sweep.format_budget(1e18) == "1e18"


FAKE_TRAINER = r'''
import json, sys
from pathlib import Path
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
workdir = Path(args["workdir"]); steps = int(args["config.num_steps"]); every = int(args["config.eval.every_steps"])
workdir.mkdir(parents=True, exist_ok=True)
start = int((workdir / "ckpt").read_text()) if (workdir / "ckpt").is_file() else 0
width = float(args["config"].split("width=")[1])
with open(workdir / "metrics.jsonl", "a") as f:
    for step in range(start + 1, steps + 1):
        row = {"step": step, "loss": 1.0 / step, "perf/tflops_per_s": 2.0}
        if step % every == 0 or step == steps:
            row.update({"eval/loss": 0.5 + 1.0 / (width * step), "eval/loss_t0-499": 0.9})
        f.write(json.dumps(row) + "\n")
        (workdir / "ckpt").write_text(str(step))
        if step == int(args.get("config.stop_at", 0)):
            sys.exit(3)  # a cut run: the next attempt resumes from its checkpoint
(workdir / "export").mkdir()
'''


def test_local_runner_skips_finished_and_resumes_cut_runs(tmp_path):
    trainer = tmp_path / "fake_train.py"
    trainer.write_text(FAKE_TRAINER)
    runs, _ = sweep.plan(spec(tmp_path, budgets=[1e13], overrides={"stop_at": 20}), measure=fake_measure)
    for r in runs:
        r["argv"] = [sys.executable, str(trainer)] + r["argv"][3:]
    first = runner.run_local(runs, say=lambda *_: None)
    assert set(first.values()) == {3}  # every run cut at step 20
    assert not any(runner.finished(r) for r in runs)
    for r in runs:
        r["argv"] = [a for a in r["argv"] if not a.startswith("--config.stop_at")]
    second = runner.run_local(runs, say=lambda *_: None)
    assert set(second.values()) == {0} and all(runner.finished(r) for r in runs)
    assert runner.run_local(runs, say=lambda *_: None) == {r["name"]: -1 for r in runs}  # nothing left to run
    rows = runner.collect(runs)
    for r, row in zip(runs, rows):
        assert row["status"] == "finished" and row["attempts"] == 2
        assert row["loss"] == pytest.approx(0.5 + 1.0 / (r["value"] * r["steps"]))
        assert row["loss_t0-499"] == 0.9 and row["tflops_per_s"] == 2.0
        steps = [s for s, _ in row["curve"]]
        assert steps == sorted(set(steps)) and steps[-1] == r["steps"]  # one row per step across the two attempts
        assert len(row["train_curve"]) == r["steps"]


def test_write_sweep_files_and_slurm_script(tmp_path):
    written = sweep.write_sweep(spec(tmp_path), tmp_path / "sw", measure=fake_measure, nodes=2, gpus_per_node=8)
    d = Path(written["dir"])
    lines = (d / "commands.txt").read_text().splitlines()
    assert [shlex.split(line) for line in lines] == [r["argv"] for r in sweep.read_runs(d)]
    script = (d / "slurm.sh").read_text()
    assert f"#SBATCH --array=0-{len(lines) - 1}%8" in script and "#SBATCH --nodes=2" in script
    assert "#SBATCH --gpus-per-node=8" in script
    assert f"-m audioldm2_jax.scaling run --sweep-dir {d} --index \"$SLURM_ARRAY_TASK_ID\"" in script
    assert subprocess.run(["bash", "-n", str(d / "slurm.sh")]).returncode == 0
    assert json.loads((d / "sweep.json").read_text())["budgets"] == [1e14, 1e13]


def test_report_table_and_fits(tmp_path):
    """Results of made-up runs on a known law go through the table, both fits, the figures and report.md."""
    law = dict(E=0.1, A=30.0, B=60.0, alpha=0.35, beta=0.4)
    rows = []
    for budget in (1e12, 1e13, 1e14):
        for params in (3e4, 1e5, 3e5, 1e6, 3e6):
            examples = budget / (6 * params)
            loss = law["E"] + law["A"] / params ** law["alpha"] + law["B"] / examples ** law["beta"]
            rows.append(dict(name=f"r{budget:g}-{params:g}", status="finished", budget=budget, model=f"{params:g}",
                             params=params, flops_per_example=6 * params, batch=1, steps=int(examples),
                             examples=examples, compute=budget, learning_rate=1e-3, loss=loss, train_loss=loss,
                             wall_s=1.0, tflops_per_s=1.0, utilization=math.nan, steps_per_s=1.0, attempts=1,
                             curve=[[1, loss]], train_curve=[[1, loss]]))
    report_lib.write_table(rows, tmp_path)
    header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    assert tuple(header) == report_lib.TABLE_COLUMNS
    sweep_dir = tmp_path / "sw"
    sweep_dir.mkdir()
    (sweep_dir / "runs.json").write_text(json.dumps(dict(runs=[])))
    points = report_lib.fit_lib.points_from_rows(rows)
    iso = report_lib.fit_lib.fit_isoflop(points, bootstrap=50)
    par = report_lib.fit_lib.fit_parametric(points, init_grid=dict(alpha=[0.5], beta=[0.5], log_a=[3.0],
                                                                   log_b=[3.0], log_e=[-2.0]), bootstrap=20,
                                             polish=1)
    assert par.alpha == pytest.approx(0.35, rel=1e-3) and par.beta == pytest.approx(0.4, rel=1e-3)
    text = report_lib.render(dict(sweep="sw", runs=15, finished=15, level=0.9, figures=[], isoflop=iso.as_dict(),
                                  parametric=par.as_dict()), rows)
    assert "| a (N_opt ~ C^a) | 0.5" in text and text.count("| r1e+1") == 15
    for name, draw in (("a.png", lambda p: report_lib.plots.loss_vs_compute(rows, p, par)),
                       ("b.png", lambda p: report_lib.plots.isoflop_curves(rows, p, iso)),
                       ("c.png", lambda p: report_lib.plots.optimal_allocation(iso, p, par)),
                       ("d.png", lambda p: report_lib.plots.loss_curves(rows, p))):
        assert draw(tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_demo_config_scales_the_unet():
    c = scaling_demo.get_config("ldm,width=0.75,depth=2,root=R")
    assert tuple(c.model.unet.block_out_channels) == (32, 48)  # 24 and 48 rounded to multiples of 16
    assert tuple(c.model.unet.layers_per_block) == (2, 2)
    assert c.init.vae == "" and c.init.audiomae == "" and c.init.t5 == "R/text/t5"
    with pytest.raises(ValueError, match="width"):
        scaling_demo.get_config("ldm,width=-1")
    with pytest.raises(ValueError, match="unknown option"):
        scaling_demo.get_config("ldm,preset=s")
    assert sweep.load_spec(dict(scaling_demo.SWEEP))["axis"] == "width"
