"""`python -m kzoo.eval ...`: lm-eval's own command line with the model `kzoo` registered and
kzoo's shipped tasks on the include path.

lm-eval finds only the models it ships (it has no plugin entry points), so
`lm_eval --model kzoo` needs kzoo imported first; this does that, then runs lm-eval's CLI:

    python -m kzoo.eval run --model kzoo --model_args pretrained=runs/sft --batch_size 16 \
        --tasks kzoo_arith_mc
"""

import sys

from lm_eval.__main__ import cli_evaluate

from kzoo.eval import TASKS_DIR

if __name__ == "__main__":
    if "--tasks" in sys.argv and "--include_path" not in sys.argv:
        sys.argv += ["--include_path", str(TASKS_DIR)]
    sys.exit(cli_evaluate())
