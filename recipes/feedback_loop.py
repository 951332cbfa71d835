"""The feedback loop in miniature: pre-train, sample, rate, DPO, measure -- on a CPU.

The script form of `kzoo feedback-loop`; the code, its options and what the run writes are
`kzoo.recipes.feedback_loop` (`kzoo feedback-loop --help`).

    python recipes/feedback_loop.py --config recipes/configs/gpt/nano_arithmetic_dpo.yaml
    python recipes/feedback_loop.py --config CONFIG --set loop.rounds=3 --set loop.control=false
"""

import os
import sys

# Before kzoo is imported (it imports TensorFlow): the backend and a quiet TensorFlow.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kzoo.recipes.feedback_loop import *  # noqa: E402, F403  (its names, for scripts that import this)
from kzoo.recipes.feedback_loop import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
