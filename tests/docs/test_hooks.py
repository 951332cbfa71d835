"""The mkdocs hook that renders benchmark results and the list of recipe configs."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("kzoo_docs_tables",
                                               ROOT / "docs" / "hooks" / "tables.py")
tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tables)


def _result(folder: Path, name: str, rows, stem=None):
    (folder / "results").mkdir(parents=True, exist_ok=True)
    (folder / "results" / f"{stem or name}.json").write_text(json.dumps({
        "benchmark": name, "date": "2026-01-02", "machine": {"cpus": 2},
        "settings": {"steps": 3}, "rows": rows}))


def test_benchmark_tables_render_rows_and_commands(tmp_path):
    (tmp_path / "speed.py").write_text("")
    _result(tmp_path, "speed", [{"model": "kzoo", "tokens/s": 12345.6, "xla": True}])
    _result(tmp_path, "speed", [{"model": "a|b", "tokens/s": 1.5, "xla": False}],
            stem="speed_small")
    text = tables.render_tables(tmp_path / "results")
    assert "| kzoo | 12,346 | yes |" in text
    assert "| a\\|b | 1.5 | no |" in text
    assert "### `speed`" in text and "### `speed_small`" in text
    assert "python speed.py`." in text
    assert "python speed.py` with the options of this run" in text
    assert "Measured 2026-01-02" in text and "Settings: `steps=3`." in text


def test_benchmark_result_without_script_is_an_error(tmp_path):
    _result(tmp_path, "orphan", [{"a": 1}])
    with pytest.raises(ValueError, match="no script .* is named 'orphan'"):
        tables.render_tables(tmp_path / "results")


def test_recipe_configs_need_their_command(tmp_path):
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "nano_x_pretrain.yaml").write_text(
        "# python recipes/pretrain.py --config recipes/configs/gpt/nano_x_pretrain.yaml\n"
        "# A tiny run.\nrun_dir: runs/x\n")
    text = tables.render_configs(tmp_path)
    assert "| gpt | `nano_x_pretrain.yaml` | `python recipes/pretrain.py" in text
    assert "A tiny run." in text
    (tmp_path / "gpt" / "bad.yaml").write_text("run_dir: runs/y\n")
    with pytest.raises(ValueError, match="bad.yaml: a recipe config must start with"):
        tables.render_configs(tmp_path)


def test_repository_configs_and_results_render():
    assert "| gpt |" in tables.render_configs()
    assert "Reproduce:" in tables.render_tables()
