"""Mutation testing of kzoo with mutmut: every mutant of a module, run by the tests covering it.

mutmut (3.x) plants one small bug at a time (`<` -> `<=`, `0` -> `1`, a dropped argument, a
string changed to `"XX...XX"`, ...). A mutant that makes a test fail is *killed*; one that passes
every test *survived*: a bug the suite cannot see. An *equivalent* mutant changes the code but not
what it does, so no test can kill it: it is listed, with a one-line reason, in
`scripts/mutation_equivalents.toml` and left out of the score. The score of a module is
(killed + timeout) / (every mutant not equivalent); a mutant of a function no selected test calls
("no tests") counts against it like a survivor.

How it runs (outside CI: minutes per module on 2 cores):
- The repository (`git ls-files`, plus untracked files git does not ignore) is copied to a
  temporary folder; mutmut runs there, so its `mutants/` folder never appears in the checkout.
- Per module, the copy's `[tool.mutmut]` (see pyproject.toml) gets `only_mutate = [module]` and
  `pytest_add_cli_args_test_selection` = the test files that cover it (`TESTS`; a module not
  listed runs the test folder named like its package, kzoo/x/y.py -> tests/x). mutmut then runs,
  for each mutant, only the tests that call the mutated function (it records that first).
- mutmut's fork server collects the tests once (TensorFlow imported once); each mutant runs in a
  process forked from it in about 1.5 s plus its tests' own time.

Usage (from the repository root; niced on a shared machine):

    nice -n 15 .venv/bin/python scripts/mutation.py --modules kzoo/serve/sampling.py kzoo/losses
    nice -n 15 .venv/bin/python scripts/mutation.py            # every module of kzoo/ (hours)
    .venv/bin/python scripts/mutation.py --count               # mutants per module, no tests

Results go to `benchmarks/results/mutation.json` (`--json`): one row per module (rows of modules
not run this time are kept), the survivors with their changed line, the measured seconds per
mutant and what every module of kzoo/ would take at that rate. `--keep DIR` keeps the copy
(then `cd DIR && ../.venv/bin/mutmut show NAME` / `mutmut browse` work there).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = "benchmarks/results/mutation.json"
EQUIVALENTS = "scripts/mutation_equivalents.toml"
# mutmut's command line, with one fix: its trampoline (the wrapper that picks the active mutant)
# hides a method's arguments from `inspect.getfullargspec`, and Keras reads a layer's
# `__init__` arguments that way (`Operation.__new__`: IndexError for every kzoo layer). Giving
# the `__init__` wrapper the method's `__signature__` restores them; mutmut's fork server and
# workers are forked from this process, so they all get it.
_LAUNCHER = """
import inspect, sys
import mutmut.mutation.trampoline as trampoline
_wrap = trampoline.wrap_in_trampoline
def wrap_in_trampoline(mutants_dict, is_classmethod=False):
    inner = _wrap(mutants_dict, is_classmethod)
    def decorate(func):
        wrapper = inner(func)
        if func.__name__ == "__init__":  # only there: Keras copies other methods' __dict__
            wrapper.__signature__ = inspect.signature(func)
        return wrapper
    return decorate
trampoline.wrap_in_trampoline = wrap_in_trampoline
from mutmut.__main__ import cli
sys.argv[0] = "mutmut"
cli()
"""
MUTMUT = [sys.executable, "-c", _LAUNCHER]

_LOSSES = ["tests/losses/test_loss_values.py", "tests/losses/test_preference_losses.py",
           "tests/losses/test_reward_losses.py"]
_SAMPLERS = ["tests/samplers/test_sampler_mutants.py", "tests/samplers/test_samplers.py",
             "tests/samplers/test_filters_vs_transformers.py"]
_TOKENIZERS = ["tests/tokenizers/test_tokenizers.py", "tests/tokenizers/test_tokenizer_edges.py",
               "tests/tokenizers/test_corrupt_tokenizer.py"]
_LAYERS = ["tests/layers/test_activations.py", "tests/layers/test_argument_checks.py",
           "tests/layers/test_embedding.py",
           "tests/layers/test_feedforward.py", "tests/layers/test_projection.py",
           "tests/layers/test_layer_contract.py", "tests/layers/test_layer_numerics.py"]
# Source module -> the test files that cover it (fast, specific files: every mutant of the
# module runs the ones among them that call the mutated function).
TESTS = {
    "kzoo/serve/sampling.py": ["tests/serve/test_sampling.py",
                               "tests/serve/test_sampling_plan.py"],
    "kzoo/training/plan.py": ["tests/training/test_plan.py"],
    "kzoo/losses/__init__.py": _LOSSES,
    "kzoo/losses/preference.py": _LOSSES,
    "kzoo/losses/reward.py": _LOSSES,
    "kzoo/losses/kto.py": ["tests/losses/test_kto_loss.py"],
    "kzoo/losses/orpo.py": ["tests/alignment/test_orpo.py"],
    "kzoo/losses/policy_gradient.py": ["tests/alignment/test_policy_gradient_vs_trl.py"],
    "kzoo/samplers/functional.py": [*_SAMPLERS, "tests/serve/test_sampling.py"],
    "kzoo/samplers/__init__.py": _SAMPLERS,
    "kzoo/samplers/variants.py": _SAMPLERS,
    "kzoo/samplers/beam.py": [*_SAMPLERS, "tests/samplers/test_keras_hub_compat.py",
                              "tests/samplers/test_beam_protocol.py"],
    "kzoo/samplers/contrastive.py": [*_SAMPLERS, "tests/generation/test_contrastive.py"],
    "kzoo/layers/activations.py": _LAYERS,
    "kzoo/layers/projection.py": _LAYERS,
    "kzoo/layers/embedding.py": ["tests/layers/test_embedding.py"],
    "kzoo/layers/feedforward.py": ["tests/layers/test_feedforward.py"],
    "kzoo/layers/_checks.py": _LAYERS,
    "kzoo/tokenizers/base.py": _TOKENIZERS,
    "kzoo/tokenizers/byte.py": _TOKENIZERS,
    "kzoo/tokenizers/char.py": _TOKENIZERS,
    "kzoo/tokenizers/bpe.py": _TOKENIZERS,
    "kzoo/tokenizers/chat_template.py": ["tests/tokenizers/test_chat_template_render.py"],
    "kzoo/training/schedules.py": ["tests/training/test_schedules.py"],
    "kzoo/training/divergence.py": ["tests/training/test_guards.py"],
    "kzoo/training/guard.py": ["tests/training/test_guards.py",
                               "tests/training/test_dpo_values.py"],
    "kzoo/training/optimizers.py": ["tests/training/test_optimizers.py"],
    "kzoo/layers/normalization.py": ["tests/layers/test_normalization.py",
                                     "tests/layers/test_layer_numerics.py"],
}
# mutmut's own exit-code meanings, folded into the columns of the record
_COLUMNS = {"killed": "killed", "timeout": "timeout", "survived": "survived",
            "no tests": "no tests", "segfault": "killed", "caught by type check": "killed"}


def tests_for(module: str) -> list[str]:
    """The test files that cover `module` (existing ones only)."""
    listed = TESTS.get(module)
    if listed is None:
        package = Path(module).parts[1] if len(Path(module).parts) > 2 else ""
        listed = [f"tests/{package}"] if package else []
    return [t for t in listed if (ROOT / t).exists()]


def expand(modules: list[str]) -> list[str]:
    """Files and folders under kzoo/ -> the .py modules, sorted."""
    out = []
    for entry in modules:
        path = ROOT / entry
        if path.is_dir():
            out += sorted(str(p.relative_to(ROOT)) for p in path.rglob("*.py"))
        elif path.is_file() and entry.endswith(".py"):
            out.append(entry)
        else:
            raise SystemExit(f"--modules: {entry!r} is neither a .py file nor a folder")
    return out


def count_mutants(modules: list[str]) -> dict[str, int]:
    """How many mutants mutmut makes of each module, without running anything."""
    os.chdir(ROOT)  # mutmut reads [tool.mutmut] from ./pyproject.toml
    from mutmut.mutation.file_mutation import create_mutations

    return {m: len(create_mutations(m, (ROOT / m).read_text("utf-8"))[1]) for m in modules}


def load_equivalents(path: Path) -> dict[str, dict]:
    """mutant name -> {"line": the mutated line, "reason": why it is equivalent}."""
    if not path.is_file():
        return {}
    entries = tomllib.loads(path.read_text("utf-8")).get("equivalent", [])
    return {e["mutant"]: e for e in entries}


def make_copy() -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    copy_root = Path(tempfile.mkdtemp(prefix="kzoo-mutmut-"))
    for rel in filter(None, files):
        source, target = ROOT / rel, copy_root / rel
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the working tree
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        elif source.is_file():
            shutil.copy2(source, target)
    return copy_root


def configure(copy_root: Path, module: str, tests: list[str]) -> None:
    """Point the copy's [tool.mutmut] at one module and its tests."""
    path = copy_root / "pyproject.toml"
    text = (ROOT / "pyproject.toml").read_text("utf-8")
    if "[tool.mutmut]" not in text:
        raise SystemExit("pyproject.toml has no [tool.mutmut] section")
    extra = (f"only_mutate = {json.dumps([module])}\n"
             f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n")
    path.write_text(text.replace("[tool.mutmut]\n", "[tool.mutmut]\n" + extra, 1), "utf-8")


def changed_line(copy_root: Path, name: str) -> str:
    """The first line the mutant adds, from `mutmut show` ("" when there is none)."""
    shown = subprocess.run([*MUTMUT, "show", name], cwd=copy_root, capture_output=True,
                           text=True).stdout
    added = [line[1:] for line in shown.splitlines()
             if line.startswith("+") and not line.startswith("+++")]
    return " ".join(added[0].split()) if added else ""


def run_module(copy_root: Path, module: str, workers: int, equivalents: dict, log_dir: Path):
    """Run every mutant of `module`; (row dict, list of survivor dicts)."""
    tests = tests_for(module)
    row = {"module": module, "tests": tests}
    if not tests:
        return row | {"error": "no test files map to it"}, []
    shutil.rmtree(copy_root / "mutants", ignore_errors=True)
    configure(copy_root, module, tests)
    log = log_dir / (module.replace("/", "_") + ".log")
    started = time.time()
    with log.open("w") as out:
        code = subprocess.run([*MUTMUT, "run", "--max-children", str(workers)], cwd=copy_root,
                              stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = time.time() - started
    meta = copy_root / "mutants" / (module + ".meta")
    if not meta.is_file():
        tail = log.read_text(errors="replace").replace("\r", "\n").splitlines()[-5:]
        return row | {"error": f"mutmut exited {code}: " + " | ".join(tail)}, []
    from mutmut.stats import status_by_exit_code

    exits = json.loads(meta.read_text("utf-8"))["exit_code_by_key"]
    if code != 0 or None in exits.values():  # the unmutated tests failed, or it was cut short
        tail = log.read_text(errors="replace").replace("\r", "\n").splitlines()[-5:]
        return row | {"error": f"mutmut exited {code}, {list(exits.values()).count(None)} "
                               "mutants not checked: " + " | ".join(tail)}, []
    counts = dict.fromkeys(["killed", "timeout", "survived", "no tests", "suspicious",
                            "equivalent"], 0)
    survivors = []
    for name, exit_code in sorted(exits.items(), key=lambda kv: _natural(kv[0])):
        status = _COLUMNS.get(status_by_exit_code[exit_code], "suspicious")
        if status in ("survived", "no tests", "suspicious"):
            line = changed_line(copy_root, name)
            known = equivalents.get(name)
            if known and " ".join(known["line"].split()) == line:
                status = "equivalent"
            else:
                if known:
                    print(f"  stale equivalent entry (its line changed): {name}")
                survivors.append({"mutant": name, "status": status, "line": line})
        counts[status] += 1
    killed = counts["killed"] + counts["timeout"]
    scored = len(exits) - counts["equivalent"]
    row |= {"mutants": len(exits), **counts,
            "score %": round(100.0 * killed / max(scored, 1), 1),
            "seconds": round(seconds), "s/mutant": round(seconds / max(len(exits), 1), 2)}
    return row, survivors


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modules", nargs="+", default=["kzoo"],
                        help="files or folders under kzoo/ (default: all of kzoo/)")
    parser.add_argument("--workers", type=int, default=1, help="mutants run at once")
    parser.add_argument("--json", default=DEFAULT_JSON)
    parser.add_argument("--equivalents", default=EQUIVALENTS)
    parser.add_argument("--count", action="store_true",
                        help="print the mutants of each module and an estimate; run nothing")
    parser.add_argument("--keep", metavar="DIR", help="keep the mutmut copy here (a new folder)")
    parser.add_argument("--rescore", action="store_true",
                        help="apply the equivalents file to the JSON's survivors; run nothing")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    modules = expand(args.modules)
    json_path = ROOT / args.json
    old = json.loads(json_path.read_text("utf-8")) if json_path.is_file() else {}
    if old.get("benchmark") == "mutation_test":  # the sampled record of the old AST mutator
        old = {"previous": old}
    rate = _rate(old.get("rows", []))
    if args.count:
        counts = count_mutants(modules)
        for module, n in counts.items():
            print(f"{n:6d}  {module}")
        total = sum(counts.values())
        print(f"{total} mutants in {len(counts)} modules"
              + (f"; about {total * rate / 3600:.1f} h at {rate:.2f} s a mutant" if rate else ""))
        return 0
    # SIGTERM (a kill) unwinds like Ctrl-C, so the temporary copy is removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.rescore:
        rescore(json_path, old, load_equivalents(ROOT / args.equivalents))
        return 0
    os.environ.setdefault("KZOO_TEST_DATA", str((ROOT / ".." / "shared" / "data").resolve()))
    equivalents = load_equivalents(ROOT / args.equivalents)
    log_dir = ROOT / "runs" / "mutation"
    log_dir.mkdir(parents=True, exist_ok=True)
    everything = count_mutants(expand(["kzoo"]))  # for the estimate: all of kzoo/
    copy_root = make_copy()
    rows = {r["module"]: r for r in old.get("rows", [])}
    survivors = {s["mutant"]: s for s in old.get("survivors", [])
                 if not any(s["mutant"].startswith(_dotted(m) + ".") for m in modules)}
    try:
        for module in modules:
            row, found = run_module(copy_root, module, args.workers, equivalents, log_dir)
            rows[module] = row
            survivors.update({s["mutant"]: s for s in found})
            print(json.dumps(row), flush=True)
            for s in found:
                print(f"  {s['status'].upper():10} {s['mutant']}: {s['line']}")
            # after every module, so a long run that is stopped keeps what it measured
            write_record(json_path, args, rows, survivors, everything, old.get("previous"))
    finally:
        if args.keep:
            shutil.move(copy_root, args.keep)
        else:
            shutil.rmtree(copy_root, ignore_errors=True)
    return 0


def write_record(json_path: Path, args, rows: dict, survivors: dict, everything: dict,
                 previous) -> None:
    ordered = [rows[m] for m in sorted(rows)]
    rate = _rate(ordered)
    total = sum(everything.values())
    record = {
        "benchmark": "mutation (mutmut)",
        "tool": "mutmut " + _version(),
        "command": "nice -n 15 .venv/bin/python scripts/mutation.py --modules ...",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_name(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "settings": {"workers": args.workers, "nice": os.nice(0),
                     "score": "(killed + timeout) / (mutants - equivalent); 'no tests' counts "
                              "against it", "equivalents": args.equivalents},
        "rows": ordered,
        "survivors": sorted(survivors.values(), key=lambda s: _natural(s["mutant"])),
        "estimate_all_of_kzoo": {
            "modules": len(everything), "mutants": total, "seconds per mutant": round(rate, 2),
            "hours": round(total * rate / 3600, 1),
            "note": "measured seconds per mutant of the modules run (mutmut's start-up "
                    "included), times every mutant of kzoo/ (mutmut's generator, counted "
                    "without running: a few more than it tests)"},
        "previous": previous,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", "utf-8")
    print(f"wrote {os.path.relpath(json_path)}; all of kzoo/: {total} mutants, about "
          f"{record['estimate_all_of_kzoo']['hours']} h at {rate:.2f} s a mutant", flush=True)


def rescore(json_path: Path, record: dict, equivalents: dict) -> None:
    """Move the recorded survivors now listed (with the same line) as equivalent."""
    rows = {_dotted(r["module"]): r for r in record.get("rows", [])}
    left = []
    for s in record.get("survivors", []):
        known = equivalents.get(s["mutant"])
        row = rows.get(s["mutant"].rsplit(".", 1)[0])
        if row is None or not known or " ".join(known["line"].split()) != s["line"]:
            left.append(s)
            continue
        row[s["status"]] -= 1
        row["equivalent"] += 1
    for row in rows.values():
        if row.get("mutants"):
            done = row["killed"] + row["timeout"]
            row["score %"] = round(100.0 * done / max(row["mutants"] - row["equivalent"], 1), 1)
    record["survivors"] = left
    json_path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", "utf-8")
    for row in rows.values():
        print(f"{row['module']}: {row.get('score %')}% ({row.get('equivalent')} equivalent)")


def _dotted(module: str) -> str:
    return module.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def _rate(rows: list[dict]) -> float:
    """Seconds per mutant over every row that ran."""
    done = [r for r in rows if r.get("mutants")]
    return sum(r["seconds"] for r in done) / max(sum(r["mutants"] for r in done), 1)


def _version() -> str:
    from importlib.metadata import version

    return version("mutmut")


if __name__ == "__main__":
    sys.exit(main())
