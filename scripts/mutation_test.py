"""Mutation testing of kzoo's core: plant one small bug at a time and run the tests that cover it.

A mutant that makes a test fail is *killed*; one that passes every test *survived*: a bug the
suite cannot see. The score is killed / non-equivalent mutants (an *equivalent* mutant changes
the code but not its behaviour, so no test can kill it; list those in
`scripts/mutation_equivalent.txt`, one `FILE:LINE: MUTATION  # reason` per line).

The working tree is never touched: the repository (`git ls-files`, plus untracked files that git
does not ignore) is copied into a temporary folder, each mutant is written there, and the tests
run from that copy with its `kzoo` first on `PYTHONPATH`; a check before every test run aborts
if `kzoo` is imported from anywhere else (the venv's editable install points at the checkout).

Mutation operators (AST-based, one change per mutant):
    compare       < <=, > >=, == !=, is / is not, in / not in
    arith         + -, * /, // -> /, ** -> * (also in `x += y`)
    boolop        and <-> or
    constant      0 <-> 1, True <-> False, other small ints n -> n + 1, floats changed
    unary         remove a unary minus (`axis=-1` -> `axis=1`) or a `not`
    training      `training=` True <-> False, `training=training` -> True / False
    drop-kwarg    drop one keyword argument of a call (`keepdims=True`, `approximate=True`)
    early-return  return right after an assignment, or at the start of a function returning None

Each source module maps to the test files that cover it (`TESTS` below), run with
`pytest -x -q -p no:cacheprovider` and a per-mutant timeout (a few times the unmutated run); a
mutant that runs past it counts as killed, reported apart as a timeout. The tests first run
unmutated; any that fail then (someone is editing them) are deselected and named in the JSON.
It is slow (5 to 50 s a mutant: every run imports TensorFlow), so it is not part of CI; sample
with `--max-mutants` (per `--modules` entry, seeded by `--seed`).

Usage (from the repository root; one worker, niced, on a shared machine):

    nice -n 10 .venv/bin/python scripts/mutation_test.py --max-mutants 40 --seed 0
    nice -n 10 .venv/bin/python scripts/mutation_test.py --modules kzoo/losses --list
    nice -n 10 .venv/bin/python scripts/mutation_test.py --modules kzoo/models/causal_lm.py \
        --operators training --json /tmp/m.json
    nice -n 10 .venv/bin/python scripts/mutation_test.py --rerun-survivors

`--rerun-survivors` re-runs only the survivors recorded in the JSON (`--json`, default
`benchmarks/results/mutation.json`) and updates its counts: the loop for closing the gaps (a
survivor whose line moved is found again by its text). Every mutant's result goes to
`--details` (default `runs/mutation/mutants.json`).
"""

from __future__ import annotations

import argparse
import ast
import copy
import datetime
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODULES = ("kzoo/layers", "kzoo/samplers", "kzoo/generation", "kzoo/losses",
                   "kzoo/alignment/dpo.py")
DEFAULT_JSON = "benchmarks/results/mutation.json"
DEFAULT_DETAILS = "runs/mutation/mutants.json"
EQUIVALENT_FILE = "scripts/mutation_equivalent.txt"

_LAYERS_ALL = [
    "tests/layers/test_layer_numerics.py", "tests/layers/test_bias_head_dim_rope_scaling.py",
    "tests/layers/test_normalization.py",
    "tests/layers/test_rotary.py", "tests/layers/test_embedding.py",
    "tests/layers/test_feedforward.py", "tests/layers/test_attention.py",
    "tests/layers/test_transformer_block.py",
]
_SAMPLERS = ["tests/samplers/test_sampler_mutants.py", "tests/samplers/test_samplers.py"]
_GENERATE = ["tests/generation/test_generate_mutants.py", "tests/generation/test_generate.py"]
_LOSSES = ["tests/losses/test_loss_values.py", "tests/losses/test_preference_losses.py",
           "tests/losses/test_reward_losses.py"]
# Source module -> the test files that cover it, fastest and most specific first (`-x` stops at
# the first failure). Files that do not exist (yet) are left out; a module missing here runs
# the test folder named like its package (kzoo/models/x.py -> tests/models).
TESTS = {
    "kzoo/layers/attention.py": ["tests/layers/test_layer_numerics.py",
                                 "tests/layers/test_attention.py",
                                 "tests/layers/test_bias_head_dim_rope_scaling.py",
                                 "tests/layers/test_transformer_block.py"],
    "kzoo/layers/normalization.py": ["tests/layers/test_layer_numerics.py",
                                     "tests/layers/test_normalization.py",
                                     "tests/layers/test_transformer_block.py"],
    "kzoo/layers/rotary.py": ["tests/layers/test_layer_numerics.py",
                              "tests/layers/test_rotary.py",
                              "tests/layers/test_bias_head_dim_rope_scaling.py",
                              "tests/layers/test_attention.py"],
    "kzoo/layers/embedding.py": ["tests/layers/test_layer_numerics.py",
                                 "tests/layers/test_embedding.py"],
    "kzoo/layers/feedforward.py": ["tests/layers/test_layer_numerics.py",
                                   "tests/layers/test_feedforward.py"],
    "kzoo/layers/activations.py": ["tests/layers/test_layer_numerics.py",
                                   "tests/layers/test_feedforward.py"],
    "kzoo/layers/transformer_block.py": ["tests/layers/test_layer_numerics.py",
                                         "tests/layers/test_transformer_block.py",
                                         "tests/layers/test_bias_head_dim_rope_scaling.py"],
    "kzoo/layers/_checks.py": ["tests/layers/test_argument_checks.py", *_LAYERS_ALL],
    "kzoo/layers/__init__.py": _LAYERS_ALL,
    "kzoo/samplers/functional.py": [*_SAMPLERS, "tests/samplers/test_filters_vs_transformers.py"],
    "kzoo/samplers/sampler.py": [*_SAMPLERS, "tests/samplers/test_keras_hub_compat.py"],
    "kzoo/samplers/variants.py": _SAMPLERS,
    "kzoo/samplers/beam.py": [*_SAMPLERS, "tests/samplers/test_keras_hub_compat.py"],
    "kzoo/samplers/__init__.py": _SAMPLERS,
    "kzoo/generation/loops.py": [*_GENERATE, "tests/generation/test_stream.py"],
    "kzoo/generation/generator.py": [*_GENERATE, "tests/generation/test_stream.py"],
    "kzoo/generation/inputs.py": _GENERATE,
    "kzoo/generation/decoders.py": _GENERATE,
    "kzoo/generation/__init__.py": [*_GENERATE, "tests/generation/test_stream.py"],
    "kzoo/generation/distribution.py": ["tests/generation/test_distribution.py"],
    "kzoo/losses/preference.py": _LOSSES,
    "kzoo/losses/reward.py": _LOSSES,
    "kzoo/losses/__init__.py": _LOSSES,
    "kzoo/alignment/dpo.py": ["tests/training/test_dpo_values.py", "tests/training/test_dpo.py"],
    "kzoo/models/causal_lm.py": ["tests/models/test_dropout_at_inference.py",
                                 "tests/models/test_causal_lm.py"],
}

# Run before pytest in every test process: refuse to test anything but the mutated copy.
_RUNNER = r"""
import os, sys
root = os.path.realpath(os.environ["KZOO_MUTATION_ROOT"])
try:
    import kzoo
except Exception as error:  # the mutant breaks the import itself: killed
    print(f"MUTATION-IMPORT-FAILED {type(error).__name__}: {error}")
    sys.exit(96)
where = os.path.realpath(kzoo.__file__)
print(f"MUTATION-KZOO {where}")
if not where.startswith(root + os.sep):
    sys.exit(97)
import pytest
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", *sys.argv[1:]]))
"""
_WRONG_KZOO = 97

_COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
            ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
            ast.In: ast.NotIn, ast.NotIn: ast.In}
_ARITH = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
          ast.FloorDiv: ast.Div, ast.Pow: ast.Mult}
_ATOMS = (ast.Name, ast.Attribute, ast.Call, ast.Subscript, ast.List, ast.Tuple, ast.Dict)


@dataclass
class Mutant:
    """One planted change.

    Attributes:
        file: str. repository-relative path of the source file.
        line: int. line of the change (for an inserted statement: the line it follows).
        operator: str. the operator's name (see the module docstring).
        description: str. what changes, e.g. "compare: `a < b` -> `a <= b`".
        span: list[int]. (start line, start byte column, end line, end byte column) replaced.
        text: str. the replacement source.
        status: str. "pending", "killed", "timeout", "survived", "equivalent" or "error".
        seconds: float. how long its test run took.
        killed_by: str. the first failing test (or why it counts as killed).
        module: str. the `--modules` entry it belongs to.
        previous_id: str. with `--rerun-survivors`, its id in the previous run (lines move).
    """

    file: str
    line: int
    operator: str
    description: str
    span: list
    text: str
    status: str = "pending"
    seconds: float = 0.0
    killed_by: str = ""
    module: str = ""
    previous_id: str = ""

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}: {self.description}"


# ------------------------------------------------------------------------------- generation
def _short(node_or_text, limit: int = 60) -> str:
    text = node_or_text if isinstance(node_or_text, str) else ast.unparse(node_or_text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit // 2 - 2] + " ... " + text[-limit // 2 + 3:]


def _header(node) -> str:
    """A statement's own source without its body (`if x < 0` for a whole `if` block)."""
    if isinstance(node, ast.If | ast.While):
        return f"{type(node).__name__.lower()} {ast.unparse(node.test)}"
    if isinstance(node, ast.For):
        return f"for {ast.unparse(node.target)} in {ast.unparse(node.iter)}"
    if isinstance(node, ast.With):
        return "with " + ", ".join(ast.unparse(item) for item in node.items)
    if isinstance(node, ast.Try):
        return "try"
    return ast.unparse(node)


def _is_text(node) -> bool:
    return isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.Constant) and isinstance(node.value, str | bytes))


def _new_constants(value):
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        if value == 0:
            return [1]
        if value == 1:
            return [0]
        return [value + 1] if abs(value) <= 4096 else []
    if isinstance(value, float):
        if value == 0.0:
            return [1.0]
        if value == 1.0:
            return [0.0]
        if abs(value) < 1.0:
            return [value + 1.0]
        return [value * 2.0] if abs(value) < 1e8 else []
    return []


_OPS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
        ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in", ast.Add: "+",
        ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Pow: "**",
        ast.And: "and", ast.Or: "or"}


def _expression_mutants(node, context: str):
    """(operator, replacement node, description) for one expression node.

    `context` is the enclosing call or statement, shortened, to tell mutants apart."""
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in _COMPARE:
                new = copy.deepcopy(node)
                new.ops[i] = _COMPARE[type(op)]()
                yield "compare", new, (f"`{_OPS[type(op)]}` -> `{_OPS[type(new.ops[i])]}` in "
                                       f"`{_short(node)}`")
    elif isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
        if not (_is_text(node.left) or _is_text(node.right)):
            new = copy.deepcopy(node)
            new.op = _ARITH[type(node.op)]()
            yield "arith", new, (f"`{_OPS[type(node.op)]}` -> `{_OPS[type(new.op)]}` in "
                                 f"`{_short(node)}`")
    elif isinstance(node, ast.BoolOp):
        new = copy.deepcopy(node)
        new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        yield "boolop", new, (f"`{_OPS[type(node.op)]}` -> `{_OPS[type(new.op)]}` in "
                              f"`{_short(node)}`")
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.Not):
        new = copy.deepcopy(node.operand)
        yield "unary", new, f"`{_short(node)}` -> `{_short(new)}` in `{context}`"
    elif isinstance(node, ast.Constant):
        for value in _new_constants(node.value):
            new = ast.Constant(value)
            yield "constant", new, f"`{_short(node)}` -> `{_short(new)}` in `{context}`"
    elif isinstance(node, ast.Call):
        call = f"{_short(node.func, 30)}(...)"
        for i, keyword in enumerate(node.keywords):
            if keyword.arg is None or keyword.arg == "name":
                continue
            shown = f"{keyword.arg}={_short(keyword.value, 30)}"
            if keyword.arg == "training":
                value = keyword.value
                options = ([not value.value] if isinstance(value, ast.Constant)
                           and isinstance(value.value, bool) else [True, False])
                for option in options:
                    new = copy.deepcopy(node)
                    new.keywords[i].value = ast.Constant(option)
                    yield "training", new, f"`{shown}` -> `training={option}` in `{call}`"
            new = copy.deepcopy(node)
            del new.keywords[i]
            yield "drop-kwarg", new, f"drop `{shown}` from `{call}`"


def _own_nodes(fn):
    """Nodes of `fn` outside its nested functions and classes."""
    stack = list(ast.iter_child_nodes(fn))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            stack.extend(ast.iter_child_nodes(node))


def _returns_value(fn) -> bool:
    return any(isinstance(n, ast.Return) and n.value is not None for n in _own_nodes(fn))


class _Collector:
    """Walks a module's AST and records every candidate mutant (source spans in bytes)."""

    def __init__(self, rel: str, source: bytes):
        self.rel = rel
        self.lines = source.splitlines(keepends=True)
        self.found: list[Mutant] = []

    def add(self, node, operator, new, description):
        text = ast.unparse(new)
        if not isinstance(new, _ATOMS) and not (
                isinstance(new, ast.Constant) and not str(text).startswith("-")):
            text = f"({text})"
        span = [node.lineno, node.col_offset, node.end_lineno, node.end_col_offset]
        self.found.append(Mutant(self.rel, node.lineno, operator, f"{operator}: {description}",
                                 span, text))

    def insert_after(self, stmt, text, description, before=False):
        line = stmt.lineno if before else stmt.end_lineno
        indent = self.lines[stmt.lineno - 1][: stmt.col_offset].decode()
        if indent.strip():  # not at the start of its line (`a = 1; b = 2`)
            return
        at = line - 1 if before else line
        self.found.append(Mutant(self.rel, line, "early-return", description,
                                 [at + 1, 0, at + 1, 0], f"{indent}{text}\n"))

    def visit(self, node, context=""):
        if isinstance(node, ast.Raise | ast.JoinedStr | ast.Import | ast.ImportFrom):
            return
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            self.visit_definition(node)
            return
        if isinstance(node, ast.Expr) and _is_text(node.value):  # a docstring
            return
        if isinstance(node, ast.stmt) or (isinstance(node, ast.Call) and not context):
            context = _short(_header(node), 50)
        if isinstance(node, ast.expr):
            for operator, new, description in _expression_mutants(node, context):
                self.add(node, operator, new, description)
        if isinstance(node, ast.AugAssign) and type(node.op) in _ARITH:
            new = copy.deepcopy(node)
            new.op = _ARITH[type(node.op)]()
            description = (f"arith: `{_OPS[type(node.op)]}=` -> `{_OPS[type(new.op)]}=` in "
                           f"`{_short(node)}`")
            span = [node.lineno, node.col_offset, node.end_lineno, node.end_col_offset]
            self.found.append(Mutant(self.rel, node.lineno, "arith", description, span,
                                     ast.unparse(new)))
        if isinstance(node, ast.AnnAssign):
            children = [node.target, node.value] if node.value is not None else []
        elif isinstance(node, ast.arg):
            children = []
        else:
            children = list(ast.iter_child_nodes(node))
        for child in children:
            self.visit(child, context)

    def visit_definition(self, node):
        if isinstance(node, ast.ClassDef):
            for stmt in node.body:
                self.visit(stmt)
            return
        args = node.args
        for default in [*args.defaults, *[d for d in args.kw_defaults if d is not None]]:
            self.visit(default, f"a default of {node.name}()")
        body = node.body
        first = 1 if body and isinstance(body[0], ast.Expr) and _is_text(body[0].value) else 0
        for stmt in body[first:]:
            self.visit(stmt)
        if node.name.startswith("__") or first >= len(body):
            return
        if not _returns_value(node):
            if len(body) > first:
                self.insert_after(body[first], "return",
                                  f"early-return: `return` first in {node.name}()",
                                  before=True)
            return
        for stmt in body[first:-1]:
            if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                    and isinstance(stmt.targets[0], ast.Name)):
                name = stmt.targets[0].id
                self.insert_after(stmt, f"return {name}",
                                  f"early-return: `return {name}` after `{_short(stmt, 40)}`")


def apply(source: bytes, mutant: Mutant) -> bytes:
    """The source with `mutant.span` replaced by `mutant.text`."""
    lines = source.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    l0, c0, l1, c1 = mutant.span
    a = starts[l0 - 1] + c0
    b = starts[l1 - 1] + c1
    return source[:a] + mutant.text.encode() + source[b:]


def generate_mutants(root: Path, rel: str) -> list[Mutant]:
    """Every valid, behaviour-changing-looking mutant of one file, with unique descriptions."""
    source = (root / rel).read_bytes()
    tree = ast.parse(source)
    collector = _Collector(rel, source)
    for stmt in tree.body:
        collector.visit(stmt)
    original = ast.dump(tree)
    mutants, seen = [], {}
    for mutant in collector.found:
        try:
            mutated = ast.parse(apply(source, mutant))
        except SyntaxError:
            continue
        if ast.dump(mutated) == original:
            continue
        key = (mutant.line, mutant.description)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 1:
            mutant.description += f" #{seen[key]}"
        mutants.append(mutant)
    return mutants


# ------------------------------------------------------------------------------- the copy
def repository_files(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=root, check=True, capture_output=True).stdout
    return sorted({p for p in out.decode().split("\0") if p})


def make_copy(root: Path) -> Path:
    """Copy the repository's files (tracked and untracked-not-ignored) into a temporary folder."""
    target = Path(tempfile.mkdtemp(prefix="kzoo-mutation-"))
    for rel in repository_files(root):
        src = root / rel
        if src.is_file() and not src.is_symlink():
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
    return target


def expand_modules(root: Path, modules) -> dict:
    """{module: its .py files}, a module being a file or a folder as given to `--modules`."""
    out, taken = {}, set()
    for module in modules:
        module = module.rstrip("/")
        path = root / module
        if path.is_dir():
            files = sorted(str(p.relative_to(root)) for p in path.rglob("*.py"))
        elif path.is_file():
            files = [str(path.relative_to(root))]
        else:
            raise SystemExit(f"--modules: {module} is not a file or folder of {root}")
        out[module] = [f for f in files if f not in taken]
        taken.update(files)
    return out


def module_of(file: str, modules) -> str:
    """The entry of `modules` (files or folders) that holds `file`."""
    for module in modules:
        if file == module or file.startswith(module.rstrip("/") + "/"):
            return module
    return file


def tests_for(root: Path, rel: str) -> list[str]:
    tests = TESTS.get(rel)
    if tests is None:
        tests = [str(Path("tests") / Path(rel).parts[1])]
    return [t for t in dict.fromkeys(tests) if (root / t).exists()]


# ------------------------------------------------------------------------------- running
def run_tests(copy_root: Path, tests: list[str], timeout: float):
    """Run pytest with the arguments `tests` in the copy: (returncode or None on timeout,
    seconds, output)."""
    env = dict(os.environ)
    env.pop("KZOO_TEST_DATA", None)
    env.update(PYTHONPATH=str(copy_root) + os.pathsep + env.get("PYTHONPATH", ""),
               KZOO_MUTATION_ROOT=str(copy_root), KERAS_BACKEND="tensorflow",
               TF_CPP_MIN_LOG_LEVEL="3", PYTHONDONTWRITEBYTECODE="1")
    start = time.monotonic()
    process = subprocess.Popen([sys.executable, "-c", _RUNNER, *tests], cwd=copy_root, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
        code = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        output, _ = process.communicate()
        code = None
    seconds = time.monotonic() - start
    text = output.decode(errors="replace")
    if code == _WRONG_KZOO:
        where = re.search(r"MUTATION-KZOO (\S+)", text)
        raise SystemExit(f"The tests imported kzoo from {where and where.group(1)}, not from the "
                         f"copy {copy_root}: refusing to go on.")
    return code, seconds, text


def _first_failure(text: str) -> str:
    match = re.search(r"^(?:FAILED|ERROR) (\S+)", text, re.M)
    if match:
        return match.group(1)
    match = re.search(r"MUTATION-IMPORT-FAILED (.*)", text)
    return f"import kzoo: {match.group(1)[:80]}" if match else ""


def load_equivalent(path: Path) -> dict:
    """{(file, line, description): reason} from the equivalent-mutants file."""
    entries = {}
    if not path.is_file():
        return entries
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^(\S+?):(\d+): (.+?)  #\s*(.*)$", line)  # two spaces, then #
        if not match or not match.group(4):
            raise SystemExit(f"{path}:{number}: expected `FILE:LINE: MUTATION  # reason`")
        entries[(match.group(1), int(match.group(2)), match.group(3))] = match.group(4)
    return entries


def match_ids(mutants: list[Mutant], wanted) -> dict:
    """Map each wanted (file, line, description) to a mutant: the exact one, else the one of
    that file with that description nearest to where the file's other matches say the line
    moved (someone edited the file since)."""
    exact = {(m.file, m.line, m.description): m for m in mutants}
    by_text = {}
    for m in mutants:
        by_text.setdefault((m.file, m.description), []).append(m)
    found, shifts = {}, {}
    for key in wanted:
        candidates = by_text.get((key[0], key[2]), [])
        if key in exact:
            found[key] = exact[key]
        elif len(candidates) == 1:
            found[key] = candidates[0]
        else:
            continue
        shifts.setdefault(key[0], []).append(found[key].line - key[1])
    used = {id(m) for m in found.values()}
    for key in wanted:
        candidates = [m for m in by_text.get((key[0], key[2]), []) if id(m) not in used]
        if key not in found and candidates:
            moves = sorted(shifts.get(key[0], [0]))
            expected = key[1] + moves[len(moves) // 2]
            found[key] = min(candidates, key=lambda m: abs(m.line - expected))
            used.add(id(found[key]))
    return found


def parse_id(text: str):
    match = re.match(r"^(\S+?):(\d+): (.+)$", text)
    return (match.group(1), int(match.group(2)), match.group(3)) if match else None


def summarize(groups: dict, generated: dict, mutants: list[Mutant], key) -> list[dict]:
    """One row per group (module or file) and a total: counts and the score."""
    rows = []
    for name in [*groups, "total"]:
        mine = [m for m in mutants if name == "total" or key(m) == name]
        count = {s: sum(m.status == s for m in mine)
                 for s in ("killed", "timeout", "survived", "equivalent", "error")}
        rows.append({
            "module": name,
            "mutants": sum(generated.get(g, 0) for g in groups) if name == "total"
            else generated.get(name, 0),
            "run": len(mine),
            **count,
        })
    return [_scored(row) for row in rows]


def _scored(row: dict) -> dict:
    scored = row["killed"] + row["timeout"] + row["survived"]
    row["score %"] = (round(100.0 * (row["killed"] + row["timeout"]) / scored, 1)
                      if scored else None)
    return row


def print_table(rows):
    keys = ["module", "mutants", "run", "killed", "timeout", "survived", "equivalent", "score %"]
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for row in rows:
        print("  ".join(str(row[k]).ljust(widths[k]) for k in keys))


# ------------------------------------------------------------------------------- main
def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", nargs="+", default=list(DEFAULT_MODULES),
                        help="source files or folders to mutate (default: %(default)s)")
    parser.add_argument("--max-mutants", type=int, default=None,
                        help="at most this many mutants per module, a seeded sample")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    parser.add_argument("--json", default=DEFAULT_JSON, help="summary JSON (the score)")
    parser.add_argument("--details", default=DEFAULT_DETAILS, help="every mutant's result")
    parser.add_argument("--equivalent", default=EQUIVALENT_FILE,
                        help="file of equivalent mutants, excluded from the score")
    parser.add_argument("--rerun-survivors", action="store_true",
                        help="run only the survivors recorded in --json and update it")
    parser.add_argument("--timeout-factor", type=float, default=3.0,
                        help="per-mutant timeout: this times the unmutated run, plus 20 s")
    parser.add_argument("--operators", nargs="+", default=None,
                        help="only these mutation operators (e.g. training compare)")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    parser.add_argument("--nice", type=int, default=10, help="niceness of the test runs")
    return parser.parse_args(argv)


def select_mutants(copy_root: Path, args, previous, equivalent):
    """(modules, mutants generated per file and per module, the mutants to run)."""
    if previous is not None:
        modules = previous["settings"]["modules"].split()
        wanted = [w for w in map(parse_id, previous.get("survivors", [])) if w]
        groups = {}
        for w in wanted:
            groups.setdefault(module_of(w[0], modules), []).append(w[0])
        groups = {m: list(dict.fromkeys(f)) for m, f in groups.items()}
    else:
        groups = expand_modules(copy_root, args.modules)
    generated, selected = {}, []
    for module, files in groups.items():
        pool = []
        for rel in files:
            mutants = generate_mutants(copy_root, rel)
            if args.operators:
                mutants = [m for m in mutants if m.operator in args.operators]
            for m in mutants:
                m.module = module
            generated[rel] = len(mutants)
            pool += mutants
        generated[module] = len(pool)
        if previous is not None:
            hits = match_ids(pool, [w for w in wanted if module_of(w[0], modules) == module])
            for w in wanted:
                if module_of(w[0], modules) == module and w not in hits:
                    print(f"not found any more (the source changed): {w[0]}:{w[1]}: {w[2]}")
            for (file, line, description), m in hits.items():
                m.previous_id = f"{file}:{line}: {description}"
            pool = list({id(m): m for m in hits.values()}.values())
        elif args.max_mutants is not None and len(pool) > args.max_mutants:
            rng = random.Random(f"{args.seed}:{module}")
            keep = set(rng.sample(range(len(pool)), args.max_mutants))
            pool = [m for i, m in enumerate(pool) if i in keep]
        for key, m in match_ids(pool, list(equivalent)).items():
            m.status, m.killed_by = "equivalent", equivalent[key]
        selected += pool
    return groups, generated, selected


def check_import(copy_root: Path):
    probe = subprocess.run(
        [sys.executable, "-c", "import kzoo; print(kzoo.__file__)"], cwd=copy_root,
        capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(copy_root), "KERAS_BACKEND": "tensorflow",
             "TF_CPP_MIN_LOG_LEVEL": "3"})
    where = probe.stdout.strip()
    print(f"copy: {copy_root}\nkzoo imported from: {where}")
    if not os.path.realpath(where).startswith(os.path.realpath(copy_root) + os.sep):
        raise SystemExit("kzoo is not imported from the copy; stopping.")


def baseline(copy_root: Path, tests: list[str]):
    """Run `tests` unmutated: (pytest arguments for the mutants, seconds), or (None, 0).

    Tests that fail without any mutation (someone is editing them) are deselected, and said
    so, rather than counting every mutant as killed."""
    code, seconds, text = run_tests(copy_root, tests, timeout=1800)
    print(f"baseline {' '.join(tests)}: rc={code} in {seconds:.1f}s", flush=True)
    if code == 0:
        return ["-x", *tests], seconds
    failing = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", text, re.M)))
    print(text[-2000:])
    if not failing:
        return None, 0.0
    args = [*tests, *[f"--deselect={t}" for t in failing]]
    code, seconds, _ = run_tests(copy_root, args, timeout=1800)
    print(f"  they fail unmutated, so they are deselected: {', '.join(failing)}; "
          f"rc={code} in {seconds:.1f}s", flush=True)
    DESELECTED.update(failing)
    return (["-x", *args], seconds) if code == 0 else (None, 0.0)


DESELECTED: set = set()


def run_mutants(copy_root: Path, mutants: list[Mutant], timeout_factor: float):
    """Run each pending mutant's tests in the copy and record its status."""
    baselines = {}
    pending = [m for m in mutants if m.status == "pending"]
    for i, mutant in enumerate(pending, 1):
        tests = tests_for(copy_root, mutant.file)
        key = tuple(tests)
        if key not in baselines:
            baselines[key] = baseline(copy_root, tests)
        args, base = baselines[key]
        if args is None:
            mutant.status, mutant.killed_by = "error", "the unmutated tests fail"
            continue
        path = copy_root / mutant.file
        original = path.read_bytes()
        try:
            path.write_bytes(apply(original, mutant))
            code, seconds, text = run_tests(copy_root, args, timeout_factor * base + 20)
        finally:
            path.write_bytes(original)
        mutant.seconds = round(seconds, 1)
        if code is None:
            mutant.status, mutant.killed_by = "timeout", f"ran past {timeout_factor:g}x + 20 s"
        elif code == 0:
            mutant.status = "survived"
        elif code == 5:
            mutant.status, mutant.killed_by = "error", "no tests collected"
        else:
            mutant.status, mutant.killed_by = "killed", _first_failure(text) or f"rc={code}"
        note = f"  <- {mutant.killed_by}" if mutant.status == "killed" else ""
        print(f"[{i}/{len(pending)}] {mutant.status.upper():8} {seconds:5.1f}s {mutant.id}{note}",
              flush=True)


def main(argv=None):
    args = parse_args(argv)
    equivalent = load_equivalent(ROOT / args.equivalent)
    json_path, details_path = ROOT / args.json, ROOT / args.details
    previous = json.loads(json_path.read_text("utf-8")) if args.rerun_survivors else None
    started = time.time()
    copy_root = make_copy(ROOT)
    try:
        groups, generated, selected = select_mutants(copy_root, args, previous, equivalent)
        if args.list:
            for m in selected:
                print(m.id if m.status == "pending" else f"{m.id}   [{m.status}]")
            total = sum(generated[g] for g in groups)
            print(f"{len(selected)} of {total} mutants, {len(groups)} modules")
            return 0
        if args.nice and os.nice(0) < args.nice:
            os.nice(args.nice - os.nice(0))
        check_import(copy_root)
        run_mutants(copy_root, selected, args.timeout_factor)
    finally:
        shutil.rmtree(copy_root, ignore_errors=True)

    details = [asdict(m) | {"id": m.id} for m in selected]
    files = {m.file: None for m in selected}
    by_file = summarize(files, generated, selected, key=lambda m: m.file)
    if previous is None:
        rows = summarize(groups, generated, selected, key=lambda m: m.module)
        survivors = [m.id for m in selected if m.status == "survived"]
    else:
        rows = merge_rows(previous["rows"], selected)
        rerun = {m.previous_id for m in selected}
        if details_path.is_file():
            old = {d["id"]: d for d in json.loads(details_path.read_text("utf-8"))
                   if d["id"] not in rerun}
            details = list({**old, **{d["id"]: d for d in details}}.values())
        # Not re-run (not found, or its tests failed unmutated): still a survivor.
        survivors = [s for s in previous.get("survivors", []) if s not in rerun]
        survivors += [m.id for m in selected if m.status in ("survived", "error", "pending")]

    details_path.parent.mkdir(parents=True, exist_ok=True)
    details_path.write_text(json.dumps(details, indent=1) + "\n", encoding="utf-8")

    total = rows[-1]
    killed = total["killed"] + total["timeout"]
    scored = killed + total["survived"]
    score = (f"{killed}/{scored} non-equivalent mutants killed ({total['timeout']} by timeout, "
             f"{total['equivalent']} equivalent left out): {100.0 * killed / max(scored, 1):.1f}%")
    command = " ".join(["nice -n 10 .venv/bin/python scripts/mutation_test.py",
                        *(sys.argv[1:] if argv is None else argv)])
    previous = previous or {}
    record = {
        "benchmark": "mutation_test",
        "command": previous.get("command", command),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "settings": previous.get("settings") or {
            "modules": " ".join(groups), "max_mutants_per_module": args.max_mutants,
            "seed": args.seed, "timeout_factor": args.timeout_factor},
        "score": score,
        "first_run": previous.get("first_run") or score,
        "reruns": (previous.get("reruns") or 0) + (1 if previous else 0),
        "minutes": round(previous.get("minutes", 0) + (time.time() - started) / 60, 1),
        "deselected": sorted(DESELECTED),
        "survivors": survivors,
        "equivalent": f"{total['equivalent']} mutants, each with its reason in {EQUIVALENT_FILE}",
        "rows": rows,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")

    print("\nthis run, per file:")
    print_table(by_file)
    print("\nper module" + (" (merged with the previous run)" if previous else "") + ":")
    print_table(rows)
    print(f"\nscore: {score}")
    if survivors:
        print("\nsurvivors:")
        for s in survivors:
            print(f"  {s}")
    print(f"\nwrote {os.path.relpath(json_path)} and {os.path.relpath(details_path)}")
    return 0


def merge_rows(rows: list[dict], rerun: list[Mutant]) -> list[dict]:
    """Previous per-module counts, with the re-run survivors moved to their new status."""
    rows = [dict(r) for r in rows]
    by_module = {r["module"]: r for r in rows}
    for row in rows:
        row.setdefault("first-run survivors", row["survived"])
    for m in rerun:
        if m.status in ("error", "pending", "survived"):
            continue  # still counted as a survivor
        for key in (m.module, "total"):
            row = by_module.get(key)
            if row is not None:
                row["survived"] -= 1
                row[m.status] = row.get(m.status, 0) + 1
    return [_scored(row) for row in rows]


if __name__ == "__main__":
    sys.exit(main())
