"""Deprecated: kzoo's own AST mutator, replaced by mutmut (`scripts/mutation.py`).

This script sampled 40 mutants per module with its own operators; its last record is kept under
"previous" in benchmarks/results/mutation.json. It now forwards to `scripts/mutation.py`, which
runs every mutant of each module with mutmut:

    nice -n 15 .venv/bin/python scripts/mutation_test.py --modules kzoo/losses
    # is  nice -n 15 .venv/bin/python scripts/mutation.py --modules kzoo/losses

The old sampling options (`--max-mutants`, `--seed`, `--operators`, `--rerun-survivors`) are
gone: every mutant runs, and mutmut re-runs only what changed.
"""

from __future__ import annotations

import sys
from pathlib import Path

_OLD_OPTIONS = ("--max-mutants", "--seed", "--operators", "--rerun-survivors", "--details",
                "--timeout-factor", "--list", "--nice")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    old = sorted({a.split("=")[0] for a in argv if a.split("=")[0] in _OLD_OPTIONS})
    if old:
        raise SystemExit(f"scripts/mutation_test.py: {', '.join(old)} no longer exist(s); "
                         "use scripts/mutation.py (--modules, --workers, --count, --json, --keep)")
    print("scripts/mutation_test.py is deprecated: running scripts/mutation.py", file=sys.stderr)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import mutation

    return mutation.main(argv)


if __name__ == "__main__":
    sys.exit(main())
