"""Train a reward model (scalar head, Bradley-Terry loss) on preference pairs with `fit`.

The script form of `kzoo reward`; the code, its options and what the run writes are
`kzoo.recipes.reward` (`kzoo reward --help`).

    python recipes/reward.py --config recipes/configs/gpt/baby_instruction_reward.yaml
    python recipes/reward.py --config CONFIG --set train.epochs=1
"""

import os
import sys

# Before kzoo is imported (it imports TensorFlow): the backend and a quiet TensorFlow.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kzoo.recipes.reward import *  # noqa: E402, F403  (its names, for scripts that import this)
from kzoo.recipes.reward import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
