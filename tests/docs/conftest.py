"""Docs test fixtures: the documentation pages and one strict site build per session."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


@pytest.fixture(scope="session")
def built_site(tmp_path_factory) -> Path:
    """Build the site once with `mkdocs build --strict` into a temporary folder.

    `KZOO_DOCS_CONFIG` may name another mkdocs config to build (default: mkdocs.yml).
    """
    site = tmp_path_factory.mktemp("site")
    config = os.environ.get("KZOO_DOCS_CONFIG", str(ROOT / "mkdocs.yml"))
    env = dict(os.environ, PYTHONPATH=str(ROOT), NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", config,
         "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    if proc.returncode != 0:
        pytest.fail(f"mkdocs build --strict failed (exit {proc.returncode}):\n"
                    f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return site
