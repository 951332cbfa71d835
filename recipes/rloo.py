"""RLOO: on-policy RL from rewards. The script form of `kzoo rloo`: the code is `kzoo.recipes.rloo`.

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
