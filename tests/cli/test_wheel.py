"""The `kzoo` command from a built wheel, in a fresh environment, outside the checkout: the
shipped configs are in the wheel, and `kzoo pretrain --config gpt/nano_pydocs_pretrain --set
train.steps=20` trains there (the issue's acceptance check).

The wheel is built from a copy of the checkout's package files (no build output lands in the
checkout). The fresh venv has no pip and no packages of its own: the wheel is installed into
it with `pip --python`, then a `.pth` file lends it the project venv's third-party packages
(TensorFlow, Keras, ...) without the project's editable install of kzoo, which a `.pth` path
line does not activate.
"""

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT


def _run(cmd, **kwargs):
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kwargs)
    assert done.returncode == 0, f"{cmd}: {done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the fresh venv's bin folder, a clean environment for it, a folder outside the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "kzoo", source / "kzoo",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "-q", "-w", str(dist), str(source)])
    wheel, = dist.glob("kzoo-*.whl")
    env_dir = tmp / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)])
    python = env_dir / "bin" / "python"
    # Before the .pth exists, so pip sees no kzoo (the project's editable one) to replace.
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
          "--no-index", "-q", str(wheel)])
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                      "['purelib'])"]).stdout.strip())
    (site / "_project_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3", PATH=str(env_dir / "bin")
               + os.pathsep + env.get("PATH", ""))
    work = tmp / "work"
    work.mkdir()
    return {"bin": env_dir / "bin", "env": env, "cwd": work, "wheel": wheel, "site": site}


def test_wheel_holds_the_configs(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    # the recipes' configs and the lm-eval task files of kzoo's evaluation suite
    shipped = sorted(str(p.relative_to(ROOT)) for p in [
        *(ROOT / "kzoo/recipes/configs").glob("*/*.yaml"), *(ROOT / "kzoo/eval/tasks").glob(
            "*.yaml")])
    assert shipped and sorted(n for n in names if n.endswith(".yaml")) == shipped
    assert "kzoo/eval/tasks/data/arith_test.jsonl" in names
    assert "kzoo/cli/main.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "kzoo = kzoo.cli.main:main" in zipfile.ZipFile(installed["wheel"]).read(entry).decode()


def test_kzoo_comes_from_the_fresh_environment(installed):
    probe = ("import importlib.util, sys; print(importlib.util.find_spec('kzoo').origin); "
             "print(any(p.startswith('" + str(ROOT) + "/') or p == '" + str(ROOT) + "' "
             "for p in sys.path if 'site-packages' not in p))")
    out = _run([str(installed["bin"] / "python"), "-c", probe], env=installed["env"],
               cwd=installed["cwd"]).stdout.split()
    assert Path(out[0]).is_relative_to(installed["site"]), out[0]
    assert out[1] == "False"


def test_ls_and_cp_outside_the_checkout(installed):
    kzoo = str(installed["bin"] / "kzoo")
    listed = _run([kzoo, "ls"], env=installed["env"], cwd=installed["cwd"]).stdout.split("\n")
    names = [line.split()[1] for line in listed[1:] if line.strip()]  # COMMAND CONFIG rows
    names = [name for name in names if name != "-"]  # a recipe that ships no config
    assert "gpt/nano_pydocs_pretrain" in names and len(names) == len(
        list((ROOT / "kzoo/recipes/configs").glob("*/*.yaml")))
    _run([kzoo, "cp", "gpt/nano_pydocs_pretrain", "mine.yaml"], env=installed["env"],
         cwd=installed["cwd"])
    copied = installed["cwd"] / "mine.yaml"
    assert copied.read_bytes() == (ROOT / "kzoo/recipes/configs/gpt/nano_pydocs_pretrain.yaml"
                                   ).read_bytes()
    again = subprocess.run([kzoo, "cp", "gpt/nano_pydocs_pretrain", "mine.yaml"],
                           capture_output=True, text=True, env=installed["env"],
                           cwd=installed["cwd"])
    assert again.returncode == 2 and "already exists" in again.stderr


@pytest.mark.slow
def test_pretrain_from_the_wheel(installed):
    run_dir = installed["cwd"] / "runs" / "nano"
    done = _run([str(installed["bin"] / "kzoo"), "pretrain", "--config",
                 "gpt/nano_pydocs_pretrain", "--set", "train.steps=20", "--set",
                 f"run_dir={run_dir}", "--set", "train.verbose=0"],
                env=installed["env"], cwd=installed["cwd"])
    assert '"steps": 20' in done.stdout, done.stdout[-2000:]
    for name in ("config.yaml", "model.keras", "tokenizer", "metrics.csv", "kzoo-run.json"):
        assert (run_dir / name).exists(), name
    # The saved config's header is a command the wheel's `kzoo` runs (nothing left to train).
    header = (run_dir / "config.yaml").read_text().splitlines()[0]
    assert header == f"# kzoo pretrain --config {run_dir / 'config.yaml'}"
    again = _run([str(installed["bin"] / "kzoo"), *shlex.split(header[2:])[1:]],
                 env=installed["env"], cwd=installed["cwd"])
    assert "already complete at step 20" in again.stdout, again.stdout[-2000:]
