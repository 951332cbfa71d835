"""mkdocs hook: tables generated from the repository at build time, so pages never go stale.

- `<!-- benchmark-tables -->` becomes the tables of `benchmarks/results/*.json` (each file holds
  `benchmark`, `date`, `machine`, `settings` and `rows`, a list of dicts sharing the same keys,
  as written by the scripts under `benchmarks/`).
- `<!-- recipe-configs -->` becomes a table of `recipes/configs/<family>/*.yaml`: each config's
  command (its first comment line) and description (the comment lines after it).
"""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
CONFIGS = ROOT / "recipes" / "configs"


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def _command(data: dict, stem: str, benchmarks_dir: Path) -> str:
    """How to reproduce a result: its own `command` field, else the script named like the
    file, else the script named by its `benchmark` field (whose options made this run)."""
    if data.get("command"):
        return f"`{data['command']}`"
    if (benchmarks_dir / f"{stem}.py").is_file():
        return f"`cd benchmarks && ../.venv/bin/python {stem}.py`"
    name = data["benchmark"]
    if (benchmarks_dir / f"{name}.py").is_file():
        return (f"`cd benchmarks && ../.venv/bin/python {name}.py` with the options of this run "
                "(see its `--help`)")
    raise ValueError(f"{benchmarks_dir}/results/{stem}.json: no script in {benchmarks_dir} "
                     f"is named {stem!r} or {name!r}, and the file has no 'command'")


def _value(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"`{k}={v}`" for k, v in value.items())
    if isinstance(value, float):
        return _cell(value)
    return f"`{value}`"


def _table(path: Path) -> str:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = data["rows"]
        data["benchmark"]  # required: it names the script that wrote the file
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a kzoo benchmark result ({error})") from None
    lines = [f"### `{path.stem}`", ""]
    lines.append(f"Measured {data['date']}." if data.get("date") else "No date recorded.")
    machine = data.get("machine") or {}
    if machine:
        lines.append("Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()) + ".")
    for key, value in data.items():
        if key not in ("benchmark", "date", "machine", "rows", "command") and value:
            lines.append(f"{key.replace('_', ' ').capitalize()}: {_value(value)}.")
    lines += ["", f"Reproduce: {_command(data, path.stem, path.parent.parent)}.", ""]
    if rows:
        keys = list(dict.fromkeys(k for row in rows for k in row))
        lines.append("| " + " | ".join(keys) + " |")
        lines.append("|" + "---|" * len(keys))
        for row in rows:
            lines.append("| " + " | ".join(_cell(row.get(k, "")) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def render_tables(results_dir: Path = RESULTS) -> str:
    """Markdown for every results file, sorted by name; a note when there are none."""
    files = sorted(results_dir.glob("*.json"))
    if not files:
        return "_No benchmark results are committed yet: run `make bench`._\n"
    return "\n".join(_table(path) for path in files)


def render_configs(configs_dir: Path = CONFIGS) -> str:
    """A markdown table of every recipe config: family, file, command, description."""
    rows = ["| family | config | run it | what it is |", "|---|---|---|---|"]
    for path in sorted(configs_dir.glob("*/*.yaml")):
        comments = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            comments.append(line.lstrip("#").strip())
        if not comments or not comments[0].startswith("python "):
            raise ValueError(f"{path}: a recipe config must start with a comment holding the "
                             "command that runs it, e.g. '# python recipes/pretrain.py --config "
                             f"recipes/configs/{path.parent.name}/{path.name}'")
        about = " ".join(c for c in comments[1:] if c).replace("|", "\\|")
        rows.append(f"| {path.parent.name} | `{path.name}` | `{comments[0]}` | {about} |")
    return "\n".join(rows) + "\n"


MARKERS = {
    "<!-- benchmark-tables -->": render_tables,
    "<!-- recipe-configs -->": render_configs,
}


def on_page_markdown(markdown, page, config, files):
    for marker, render in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, render())
    return markdown
