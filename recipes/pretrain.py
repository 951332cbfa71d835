"""Pre-train a kzoo model for next-token prediction.

The script form of `kzoo pretrain`; the code, its options and what the run writes are
`kzoo.recipes.pretrain` (`kzoo pretrain --help`).

    python recipes/pretrain.py --config recipes/configs/gpt/nano_pydocs_pretrain.yaml
    python recipes/pretrain.py --config CONFIG --set train.steps=100 --set run_dir=runs/x
"""

import os
import sys

# Before kzoo is imported (it imports TensorFlow): the backend and a quiet TensorFlow.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kzoo.recipes.pretrain import *  # noqa: E402, F403  (its names, for scripts that import this)
from kzoo.recipes.pretrain import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
