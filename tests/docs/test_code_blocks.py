"""Every code block of the documentation runs (or says why not): see `blocks.py` for the rules."""

import importlib.util
import os
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

_spec = importlib.util.spec_from_file_location("kzoo_docs_blocks", Path(__file__).with_name(
    "blocks.py"))
blocks_lib = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(blocks_lib)

PAGES = sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.parts)
PYTHON_PAGES = [p for p in PAGES
                if any(b.language == "python" and b.skip_reason is None
                       for b in blocks_lib.blocks_of(p))]


def test_docs_have_runnable_examples():
    assert len(PYTHON_PAGES) >= 8, [str(p.relative_to(ROOT)) for p in PYTHON_PAGES]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_every_block_is_run_or_explains_why_not(page):
    problems = []
    for block in blocks_lib.blocks_of(page):
        if block.skip_reason == "":
            problems.append(f"{block.where}: `not-runnable` marker without a reason")
        elif (block.skip_reason is None and block.language != "python"
              and block.language not in blocks_lib.DATA_LANGUAGES):
            problems.append(
                f"{block.where}: a {block.language or 'language-less'} block must be python "
                "(run by the tests), a data language "
                f"{sorted(blocks_lib.DATA_LANGUAGES)}, or be preceded by "
                "`<!-- not-runnable: reason -->`"
            )
    assert not problems, "\n".join(problems)


def test_parser_sees_every_python_fence():
    """A python fence the parser missed (e.g. a malformed one) would never run: count them."""
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        fences = sum(1 for line in text.splitlines() if line.strip().startswith("```python"))
        parsed = sum(1 for b in blocks_lib.blocks_of(page) if b.language == "python")
        assert fences == parsed, f"{page}: {fences} ```python fences, {parsed} parsed"


def test_marker_parsing(tmp_path):
    page = tmp_path / "p.md"
    page.write_text(
        "<!-- not-runnable: trains for ten minutes -->\n\n```bash\nmake demo\n```\n"
        "text\n```python\nx = 1\n```\n<!-- not-runnable: -->\n```python\ny\n```\n"
        "!!! note\n    ```python\n    z = 2\n    ```\n"
    )
    found = blocks_lib.blocks_of(page)
    assert [(b.language, b.skip_reason, b.line) for b in found] == [
        ("bash", "trains for ten minutes", 3), ("python", None, 7), ("python", "", 11),
        ("python", None, 15),
    ]
    assert found[3].code == "z = 2\n"


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_page_python_blocks_run(page, tmp_path, monkeypatch):
    """Run a page's python blocks in order, in one namespace, from a scratch folder that
    mirrors the repository's `recipes/` (examples use paths relative to the repository)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    os.symlink(ROOT / "recipes", tmp_path / "recipes")
    namespace = {"__name__": "__docs__"}
    # An example may set environment variables (the backends guide sets KERAS_BACKEND=jax):
    # they must not reach later tests of this process, whose child commands would inherit them.
    with mock.patch.dict(os.environ):
        for block in blocks_lib.blocks_of(page):
            if block.language != "python" or block.skip_reason is not None:
                continue
            # Line numbers in tracebacks point into the page: pad the code to the fence's line.
            code = "\n" * block.line + block.code
            try:
                exec(compile(code, str(page.relative_to(ROOT)), "exec"), namespace)
            except Exception as error:
                raise AssertionError(f"{block.where}: the example raised {error!r}") from error
