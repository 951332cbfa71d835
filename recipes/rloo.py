"""RLOO: REINFORCE with a leave-one-out baseline over G sampled completions per prompt.

The script form of `kzoo rloo`; the code, its options and what the run writes are
`kzoo.recipes.rloo` (`kzoo rloo --help`).

    python recipes/rloo.py --config recipes/configs/gpt/baby_instruction_rloo.yaml
    python recipes/rloo.py --config CONFIG --set train.steps=20
"""

import os
import sys

# Before kzoo is imported (it imports TensorFlow): the backend and a quiet TensorFlow.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kzoo.recipes.rloo import *  # noqa: E402, F403  (its names, for scripts that import this)
from kzoo.recipes.rloo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
