"""The forward pass is written once (issue 28): no module reads a private attribute of a kzoo
model or layer class defined in another module (`model._embed`, `ffn._activation_fn`, ...),
so a change inside a layer cannot silently break a copy of its code elsewhere.

The private names are collected from the classes of `kzoo/models` and `kzoo/layers`
(`self._x = ...` and `def _x`); every module of the packages that run the forward pass
(`kzoo/models`, `kzoo/layers`, `kzoo/generation`, `kzoo/viz`) may read them only on `self`,
`cls` or `super()`, or when it defines the same name itself.
"""

import ast
from pathlib import Path

KZOO = Path(__file__).resolve().parents[2] / "kzoo"
OWNERS = ("models", "layers")
READERS = ("models", "layers", "generation", "viz")


def _private_names(tree) -> set:
    """`_x` names a module's classes define: methods and `self._x = ...` attributes."""
    names = set()
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for node in ast.walk(cls):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(node.name)
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and node.value.id == "self"):
                names.add(node.attr)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def _foreign_reads(tree, names) -> list:
    """`expr._x` reads of `names` whose receiver is not `self`, `cls` or `super()`."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or node.attr not in names:
            continue
        receiver = node.value
        if isinstance(receiver, ast.Name) and receiver.id in ("self", "cls"):
            continue
        if (isinstance(receiver, ast.Call) and isinstance(receiver.func, ast.Name)
                and receiver.func.id == "super"):
            continue
        found.append((node.lineno, f"{ast.unparse(node)}"))
    return found


def test_no_module_reads_a_private_attribute_of_a_kzoo_layer_or_model():
    trees = {path: ast.parse(path.read_text()) for package in READERS
             for path in sorted((KZOO / package).rglob("*.py"))}
    owned = set()
    for path, tree in trees.items():
        if path.parent.name in OWNERS:
            owned |= _private_names(tree)
    assert "_activation_fn" in owned  # the collection sees the layers' private names
    bad = []
    for path, tree in trees.items():
        names = owned - _private_names(tree)  # a module's own private names are its own
        bad += [f"{path.relative_to(KZOO.parent)}:{line}: {text}"
                for line, text in _foreign_reads(tree, names)]
    assert not bad, "private attributes read outside their class:\n" + "\n".join(bad)


def test_the_check_finds_a_foreign_read():
    """Guards the test above: a decoder reading `ffn._activation_fn` is caught."""
    tree = ast.parse("def step(ffn, h):\n    return ffn._activation_fn(h)\n")
    assert _foreign_reads(tree, {"_activation_fn"}) == [(2, "ffn._activation_fn")]
    assert _foreign_reads(ast.parse("self._activation_fn(h)"), {"_activation_fn"}) == []
