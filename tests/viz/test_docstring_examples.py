"""Every example in kzoo.viz's docstrings runs (they are what the API reference shows)."""

import inspect
import re
import textwrap

import pytest

import kzoo.viz
from kzoo.viz import attention, curves
from kzoo.viz import inspect as viz_inspect

MODULES = [kzoo.viz, attention, curves, viz_inspect]
EXAMPLES = [
    (f"{module.__name__}.{name}" if name else module.__name__, block)
    for module in MODULES
    for name, obj in [(None, module)] + [(n, getattr(module, n)) for n in dir(module)
                                         if not n.startswith("_")
                                         and inspect.isfunction(getattr(module, n))
                                         and getattr(module, n).__module__ == module.__name__]
    for block in re.findall(r"```python\n(.*?)^\s*```", inspect.getdoc(obj) or "",
                            flags=re.S | re.M)
]


def test_every_public_function_has_an_example():
    documented = {where for where, _ in EXAMPLES}
    for name in kzoo.viz.__all__:
        function = getattr(kzoo.viz, name)
        assert f"{function.__module__}.{name}" in documented, f"{name} has no example"


@pytest.mark.parametrize("where, code", EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_docstring_example_runs(where, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    exec(compile(textwrap.dedent(code), where, "exec"), {})
