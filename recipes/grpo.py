"""GRPO: on-policy RL from rewards, with G sampled completions per prompt as the baseline.

The script form of `kzoo grpo`; the code, its options and what the run writes are
`kzoo.recipes.grpo` (`kzoo grpo --help`).

    python recipes/grpo.py --config recipes/configs/gpt/baby_instruction_grpo.yaml
    python recipes/grpo.py --config CONFIG --set train.steps=20
"""

import os
import sys

# Before kzoo is imported (it imports TensorFlow): the backend and a quiet TensorFlow.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kzoo.recipes.grpo import *  # noqa: E402, F403  (its names, for scripts that import this)
from kzoo.recipes.grpo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
