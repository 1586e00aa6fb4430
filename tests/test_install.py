"""The project as a user installs it: ``pip install`` of a copy of the sources into a fresh virtual environment, then
its programs run from another working directory with only that installed copy importable (not the repository, not
the development install): the packaged configs and their published values, one micro stage of the quickstart
(``python -m audioldm2_jax.quickstart``), ``audioldm2-train --config configs/smoke.py`` and ``audioldm2-sample`` on
a tiny checkpoint.

The fresh environment sees this one's packages (the dependencies) through a path line in a ``.pth`` file, which does
not run this environment's own ``.pth`` files: the editable install's import hook, which would serve any module the
installed copy lacks from the repository, stays out. The install uses this environment's pip without dependencies
and, when setuptools is installed here, without build isolation or the package index (offline); otherwise pip
fetches setuptools from the index as ``pip install .`` does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sysconfig
import venv
from pathlib import Path

import pytest
import soundfile
from pipeline_fixtures import tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# What a source distribution holds: the build reads pyproject.toml and README.md, and ships the package.
SOURCES = ("pyproject.toml", "README.md", "audioldm2_jax")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(bin, env)``: the fresh environment's scripts folder (its ``python`` and the project's commands) and the
    environment variables to run them with."""
    src = tmp_path_factory.mktemp("src")  # the build writes egg-info / build folders beside the sources: a copy
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    prefix = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(prefix)
    python = prefix / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONNOUSERSITE"] = "1"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True, env=env).stdout.strip()
    (Path(purelib) / "_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    command = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", str(src)]
    if importlib.util.find_spec("setuptools") is not None:
        command[4:4] = ["--no-build-isolation", "--no-index"]
    subprocess.run(command, check=True, cwd=src, env=env, timeout=600)
    return prefix / "bin", env


def _run(command, cwd, env, timeout=600) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command} failed ({result.returncode}):\n{result.stdout[-3000:]}\n" \
                                   f"{result.stderr[-5000:]}"
    return result


def test_installed_copy_is_the_one_imported(installed, tmp_path):
    bin_dir, env = installed
    probe = ("import json, sys, audioldm2_jax, audioldm2_jax.configs.sizes as sizes; "
             "print(json.dumps([sys.prefix, audioldm2_jax.__file__, str(sizes.PUBLISHED_DIR), "
             "sorted(p.name for p in sizes.PUBLISHED_DIR.iterdir())]))")
    prefix, package, published, files = json.loads(_run([str(bin_dir / "python"), "-c", probe], tmp_path, env).stdout)
    site = Path(package).resolve().parents[1]
    assert site.is_relative_to(Path(prefix).resolve()) and not site.is_relative_to(ROOT), package
    assert Path(published).resolve() == site / "audioldm2_jax" / "configs" / "published" / "audioldm2-base"
    assert files == sorted(p.name for p in (ROOT / "audioldm2_jax/configs/published/audioldm2-base").iterdir())
    for script in ("audioldm2-train", "audioldm2-sample", "audioldm2-quickstart"):
        assert (bin_dir / script).is_file(), script


def test_quickstart_stage_trains_from_another_directory(installed, tmp_path):
    """One stage of the micro quickstart (the VAE: it reads no earlier export), as the quickstart's own child process
    runs it: the packaged quickstart config, the trainer, the stage's export."""
    bin_dir, env = installed
    _run([str(bin_dir / "python"), "-m", "audioldm2_jax.quickstart", "--stage-only", "vae", "--micro", "--root", "qs"],
         tmp_path, env)
    record = json.loads((tmp_path / "qs" / "vae" / "quickstart_stage.json").read_text())
    assert record["stage"] == "vae" and record["num_steps"] == 4 and record["summary"]["final_step"] == 4
    assert (tmp_path / "qs" / "vae" / "export").is_dir() and any((tmp_path / "qs" / "vae" / "export").iterdir())


def test_train_command_reads_packaged_config_from_another_directory(installed, tmp_path):
    bin_dir, env = installed
    result = _run([str(bin_dir / "audioldm2-train"), "--config", "configs/smoke.py", "--workdir", "run",
                   "--config.num_steps=3", "--config.log.progress_bar=False"], tmp_path, env)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["final_step"] == 3, summary
    missing = subprocess.run([str(bin_dir / "audioldm2-train"), "--config", "configs/nothing.py", "--workdir",
                              "run2"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "'configs/nothing.py' does not exist" in missing.stderr


def test_sample_command_from_another_directory(installed, tmp_path):
    bin_dir, env = installed
    folder, _ = tiny_checkpoint(tmp_path / "tiny", "text")
    work = tmp_path / "work"
    work.mkdir()
    _run([str(bin_dir / "audioldm2-sample"), "--checkpoint", str(folder), "--prompt", "a dog barks",
          "--duration", "0.36", "--steps", "2", "--out", "out", "--no-progress"], work, env)
    written = sorted(p.name for p in (work / "out").iterdir())
    assert written == ["0000_a-dog-barks.json", "0000_a-dog-barks.png", "0000_a-dog-barks.wav"], written
    wave, rate = soundfile.read(str(work / "out" / "0000_a-dog-barks.wav"))
    assert rate == 16000 and wave.shape == (5760,)
