"""The `kzoo` command: its commands, `ls`, `cp`, `--config NAME`, help and exit codes.

Most cases call `kzoo.cli.main.main(argv)` in-process; the ones about the process itself (no
TensorFlow import, the exit status) run `python -m kzoo.cli.main` in a subprocess.
"""

import ast
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from kzoo.cli import configs as configs_lib
from kzoo.cli.main import commands, main, recipe_commands
from kzoo.recipes import CONFIGS_DIR, list_recipes
from tests.helpers import ROOT, one_error_line, sets

PY = [sys.executable, "-m", "kzoo.cli.main"]


def _kzoo(*args, cwd=None, env=None):
    return subprocess.run([*PY, *args], capture_output=True, text=True, cwd=cwd, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})


def test_every_recipe_module_is_a_command():
    # Every module of kzoo/recipes/ with a top-level `def main` is in the recipe registry.
    expected = set()
    for path in (ROOT / "kzoo" / "recipes").glob("*.py"):
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body):
            expected.add(path.stem)
    assert set(list_recipes()) == expected
    assert {"pretrain", "sft", "dpo", "reward", "kto", "generate", "feedback_loop",
            "export_hf"} <= expected
    assert set(recipe_commands().values()) == expected
    assert set(commands()) == {*(m.replace("_", "-") for m in expected), "prepare", "chat",
                               "rate", "eval", "serve", "plan", "ls", "cp"}


def test_each_script_runs_the_package_recipe():
    for name in list_recipes():
        script = (ROOT / "recipes" / f"{name}.py").read_text()
        assert f"from kzoo.recipes.{name} import main" in script, name
        assert len(script.splitlines()) < 60, f"recipes/{name}.py is no longer a thin script"


def test_help_lists_every_command_and_unknown_is_one_line():
    out = _kzoo("--help")
    assert out.returncode == 0 and out.stderr == ""
    for command in commands():
        assert f"\n  {command} " in out.stdout, command
    ls = _kzoo("-X")  # unknown: one line listing the commands, exit 2
    assert ls.returncode == 2 and ls.stdout == ""
    assert ls.stderr.count("\n") == 1 and "pretrain" in ls.stderr and "chat" in ls.stderr


@pytest.mark.parametrize("argv", [["ls"], ["cp", "--help"], ["--help"]])
def test_cheap_commands_import_no_tensorflow(argv, tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(
        "import sys\nfrom kzoo.cli.main import main\ncode = main(sys.argv[1:])\n"
        "print('LOADED' if 'tensorflow' in sys.modules or 'keras' in sys.modules else 'CLEAN',"
        " code)\n")
    # argv[0] named `kzoo`, as the console script's is: kzoo/__init__ then imports nothing.
    link = tmp_path / "kzoo"
    link.write_text(script.read_text())
    done = subprocess.run([sys.executable, str(link), *argv], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "CLEAN 0"


def test_ls_lists_every_shipped_config_with_its_recipe(capsys):
    assert main(["ls"]) == 0
    header, *rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert header == ["COMMAND", "CONFIG"]
    configs = {name: command for command, name in rows if name != "-"}
    files = sorted(CONFIGS_DIR.glob("*/*.yaml"))
    assert sorted(configs) == [f"{p.parent.name}/{p.stem}" for p in files]
    for path in files:
        first = path.read_text().splitlines()[0]  # `# python recipes/NAME.py --config ...`
        command = configs[f"{path.parent.name}/{path.stem}"]
        assert first.startswith(f"# python recipes/{command.replace('-', '_')}.py "), path
    assert ["export-hf", "-"] in rows  # a recipe without configs is listed too
    assert main(["ls", "--recipe", "feedback_loop"]) == 0
    assert capsys.readouterr().out.split()[2:] == ["feedback-loop", "gpt/nano_arithmetic_dpo"]
    assert main(["ls", "--recipe", "nope"]) == 2
    assert "nope" in one_error_line(capsys)


def test_every_config_names_its_kzoo_command():
    for path in sorted(CONFIGS_DIR.glob("*/*.yaml")):
        first, second = path.read_text().splitlines()[:2]
        name = f"{path.parent.name}/{path.stem}"
        script = first.split()[2]  # recipes/pretrain.py
        command = Path(script).stem.replace("_", "-")
        assert second.startswith(f"# or: kzoo {command} --config {name}"), path
        assert first.split("--config", 1)[1].split(None, 1)[1:] == \
            second.split("--config", 1)[1].split(None, 1)[1:], f"{path}: other flags differ"


def test_checkout_path_is_the_shipped_file():
    link = ROOT / "recipes" / "configs"
    assert link.is_symlink() and link.resolve() == CONFIGS_DIR
    assert (ROOT / "recipes/configs/gpt/nano_pydocs_pretrain.yaml").is_file()


def test_cp_copies_and_refuses_to_overwrite(tmp_path, capsys):
    dest = tmp_path / "mine.yaml"
    assert main(["cp", "gpt/nano_pydocs_pretrain", str(dest)]) == 0
    shipped = CONFIGS_DIR / "gpt" / "nano_pydocs_pretrain.yaml"
    assert dest.read_bytes() == shipped.read_bytes()
    assert f"kzoo pretrain --config {dest}" in capsys.readouterr().out
    dest.write_text("mine\n")
    assert main(["cp", "gpt/nano_pydocs_pretrain.yaml", str(dest)]) == 2
    assert "already exists" in one_error_line(capsys)
    assert dest.read_text() == "mine\n"
    assert main(["cp", "gpt/nope", str(tmp_path / "x.yaml")]) == 2
    assert "gpt/nope" in one_error_line(capsys)
    assert main(["cp", "gpt/nano_pydocs_pretrain", str(tmp_path / "no" / "x.yaml")]) == 2
    assert "does not exist" in one_error_line(capsys)
    assert main(["cp", "llama/baby_shakespeare_char_pretrain", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "baby_shakespeare_char_pretrain.yaml", "mine.yaml"]  # nothing else was created


def test_config_names_resolve_for_any_recipe(tmp_path):
    shipped = str(CONFIGS_DIR / "gpt" / "baby_instruction_sft.yaml")
    for value in ("gpt/baby_instruction_sft", "gpt/baby_instruction_sft.yaml",
                  "recipes/configs/gpt/baby_instruction_sft.yaml"):
        os.chdir(tmp_path)  # outside the checkout: the checkout's symlink is not there
        try:
            assert configs_lib.resolve_config(value) == shipped
        finally:
            os.chdir(ROOT)
    local = tmp_path / "gpt" / "baby_instruction_sft.yaml"
    local.parent.mkdir()
    local.write_text("run_dir: x\n")
    assert configs_lib.resolve_config(str(local)) == str(local)  # a file wins over a name
    assert configs_lib.resolve_config_args(["--config=gpt/baby_instruction_sft", "--set",
                                            "a=gpt/baby_instruction_sft"]) == [
        f"--config={shipped}", "--set", "a=gpt/baby_instruction_sft"]
    with pytest.raises(ValueError, match=r"--config gpt/missing: no such file.*gpt/nano_pydocs"):
        configs_lib.resolve_config("gpt/missing")


def test_unknown_config_name_is_one_line_exit_2(capsys):
    assert main(["sft", "--config", "gpt/typo_sft"]) == 2
    assert "gpt/typo_sft" in one_error_line(capsys)


def test_rate_without_its_module_says_so(monkeypatch, capsys):
    import kzoo.cli

    monkeypatch.setitem(sys.modules, "kzoo.cli.rate", None)  # importing it fails as if absent
    # An earlier test may have imported it: `from kzoo.cli import rate` then reads the attribute.
    monkeypatch.delattr(kzoo.cli, "rate", raising=False)
    code = main(["rate", "--help"])
    err = capsys.readouterr().err
    if code != 2:  # a None entry raises ImportError, not ModuleNotFoundError, on some Pythons
        pytest.fail(f"kzoo rate without its module: code {code}, stderr {err!r}")
    assert err.count("\n") == 1 and "kzoo.cli.rate" in err


def test_recipe_help_names_the_command(capsys):
    assert main(["pretrain", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: kzoo pretrain ") and "--config" in out and "--set" in out
    assert main(["export-hf", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: kzoo export-hf ")
    assert main(["pretrain", "--bogus"]) == 2  # argparse's own refusal, as the scripts


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("text") / "tiny.txt"
    path.write_text("\n\n".join(list(topics.values())[:6])[:20000], encoding="utf-8")
    return path


TINY = ["model.args={num_layers: 1, max_sequence_length: 32}", "train.block_size=16",
        "train.batch_size=4", "train.eval_interval=1", "train.val_batches=1",
        "train.warmup_steps=1", "train.verbose=0", "train.tensorboard=false",
        "train.jit_compile=false", "sample.max_new_tokens=4", "tokenizer={kind: byte}"]


@pytest.mark.slow
def test_pretrain_by_name_exit_codes_0_2_3(tmp_path, tiny_text, capsys):
    base = ["pretrain", "--config", "gpt/nano_pydocs_pretrain"]
    run_dir = tmp_path / "run"
    done = _kzoo(*base, *sets(*TINY, "train.steps=2", f"data.source={tiny_text}",
                              f"run_dir={run_dir}"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (run_dir / "model.keras").is_file()
    assert json.loads(done.stdout.split("result:", 1)[1])["steps"] == 2
    # The saved config's first line is the command that reruns it: here, nothing left to do.
    header = (run_dir / "config.yaml").read_text().splitlines()[0]
    kzoo, *rerun = shlex.split(header.removeprefix("# "))
    assert kzoo == "kzoo" and rerun == ["pretrain", "--config", str(run_dir / "config.yaml")]
    again = _kzoo(*rerun, cwd=tmp_path)
    assert again.returncode == 0 and "already complete at step 2" in again.stdout, again.stderr
    # Bad input in-process: a process exiting 2 on a `kzoo pretrain` refusal is
    # tests/recipes/test_pretrain_prepared.py's (bad prepared folders); here it would be one
    # more TensorFlow import (the command imports it before it reads the config).
    assert main([*base, *sets("train.stepz=2")]) == 2
    bad = capsys.readouterr()
    assert bad.err.count("\n") == 1, bad.err
    assert bad.err.startswith("error: ") and "stepz" in bad.err
    nan = _kzoo(*base, *sets(*TINY, "train.steps=4", f"data.source={tiny_text}",
                             f"run_dir={tmp_path / 'nan'}", "train.learning_rate=1e38",
                             "train.clip_norm=null", "train.warmup_steps=0"), cwd=tmp_path)
    assert nan.returncode == 3, (nan.stdout[-2000:], nan.stderr)
    assert nan.stderr.startswith("error: "), nan.stderr


def test_generate_by_config_name_in_process(tmp_path, capsys):
    from kzoo.models import CausalLM
    from kzoo.tokenizers import ByteTokenizer

    run = tmp_path / "run"
    run.mkdir()
    CausalLM.from_preset("gpt_nano", vocab_size=257, max_sequence_length=32).save(
        run / "model.keras")
    ByteTokenizer().save(run / "tokenizer")
    # The shipped config's sampler settings, the run folder and length from the command line.
    argv = ["--config", "gpt/baby_shakespeare_char_generate", str(run), "--prompt", "To",
            "--max-new-tokens", "5", "--no-stop-at-eot"]
    assert main(["generate", *argv]) == 0
    out = capsys.readouterr().out
    assert out.startswith("To") and len(out.rstrip("\n")) > 2
    assert main(["generate", *argv[:1], "gpt/missing_generate", *argv[2:]]) == 2
    assert "gpt/missing_generate" in one_error_line(capsys)


def test_python_m_form_imports_no_tensorflow_either():
    done = subprocess.run([sys.executable, "-X", "importtime", *PY[1:], "ls"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "gpt/nano_pydocs_pretrain" in done.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()]
    assert "kzoo.cli.configs" in imported
    assert not [m for m in imported if m.split(".")[0] in ("tensorflow", "keras")]
