"""Family knowledge lives in kzoo/models/families/: a parser guard, like the backend seam's.

Every kzoo/**/*.py outside kzoo/models/families/ is parsed with `ast` (nothing imported) and
fails naming file:line for
- a string literal whose whole value is a family name or a Hugging Face `model_type`
  ("gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma3", "gemma3_text"...: every registered
  family's name and model types, and the model types it refuses by name), in any case: a dict
  key, an argument, a comparison operand;
- a comparison of something named `*family*` or `*model_type*` with a string literal
  (`if family == "x"`, `model_type in ("a", "b")`), whatever the string: the dispatch that
  belongs to the registry.
Allowed: docstrings, comments, and literals in which a family name is only a word of a longer
text (an error message's prose, a recipe path such as "llama/baby_..."; preset names such as
"llama_nano" live in the family modules but may be named anywhere, as users name them).
"""

import ast

from tests.helpers import ROOT

PACKAGE = ROOT / "kzoo"
FAMILIES = PACKAGE / "models" / "families"


def _names() -> set[str]:
    from kzoo.models.families import list_families

    found = set()
    for family in list_families():
        found |= {family.name, *family.model_types, *family.refused_model_types}
    return {name.lower() for name in found}


def _docstrings(tree) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _is_dispatch_name(node) -> bool:
    text = ast.unparse(node).lower()
    return "family" in text or "model_type" in text


def _literals(node) -> list:
    """String constants of a comparison operand (one literal, or a tuple/list/set of them)."""
    items = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else [node]
    return [i for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)]


def scan(source: str, names: set[str], filename: str = "<source>") -> list:
    """(line, what) for each family-name literal and each family/model_type dispatch."""
    tree = ast.parse(source, filename)
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                id(node) not in docs and node.value.lower() in names):
            found.append((node.lineno, f"family name {node.value!r}"))
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(_is_dispatch_name(o) for o in operands if not _literals(o)) and any(
                    _literals(o) for o in operands):
                found.append((node.lineno, f"dispatch {ast.unparse(node)}"))
    return sorted(set(found))


def test_the_scan_finds_names_and_dispatch_but_not_prose():
    names = {"gpt2", "llama", "qwen3"}
    source = "\n".join([
        '"""A docstring naming llama is fine."""',          # 1
        'x = "gpt2"',                                        # 2
        'if family == "anything":',                          # 3
        '    pass',
        'y = {"Llama": 1}',                                  # 5
        'z = "keras-hub\'s Llama RoPE ignores it"',          # 6: prose, fine
        'w = "llama/baby_shakespeare_char"',                 # 7: a path, fine
        'if config["model_type"] in ("a", "b"):',            # 8
        '    pass',
        'v = "llama_nano"',                                  # 10: a preset name, fine
        'def f():',
        '    """qwen3 in a docstring."""',                   # 12: fine
        '    return kind == "qwen3"',                        # 13: the literal
        'if family is None: pass',                           # 14: no literal, fine
    ])
    lines = [line for line, _ in scan(source, names)]
    assert lines == [2, 3, 5, 8, 13]


def test_no_family_name_outside_the_family_modules():
    names = _names()
    assert {"gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma3", "gemma3_text"} <= names
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(FAMILIES):
            continue
        rel = path.relative_to(ROOT).as_posix()
        violations += [f"{rel}:{line}: {what}"
                       for line, what in scan(path.read_text(encoding="utf-8"), names, rel)]
    assert not violations, (
        "family knowledge outside kzoo/models/families (move it into the family's module and "
        "read it through the registry):\n" + "\n".join(violations))
