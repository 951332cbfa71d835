"""ORPO: odds-ratio preference optimisation on pairs, with no reference model.

The script form of `kzoo orpo`; the code, its options and what the run writes are
`kzoo.recipes.orpo` (`kzoo orpo --help`).

    python recipes/orpo.py --config recipes/configs/gpt/baby_instruction_orpo.yaml
    python recipes/orpo.py --config CONFIG --set orpo.beta=0.2
"""

import os
import sys

# Before kzoo is imported (it imports TensorFlow): the backend and a quiet TensorFlow.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kzoo.recipes.orpo import *  # noqa: E402, F403  (its names, for scripts that import this)
from kzoo.recipes.orpo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
