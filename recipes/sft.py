"""Supervised fine-tuning (SFT) on instruction data, loss on response tokens only.

The script form of `kzoo sft`; the code, its options and what the run writes are
`kzoo.recipes.sft` (`kzoo sft --help`).

    python recipes/sft.py --config recipes/configs/gpt/baby_instruction_sft.yaml
    python recipes/sft.py --config CONFIG --set train.epochs=1 --set run_dir=runs/x
"""

import os
import sys

# Before kzoo is imported (it imports TensorFlow): the backend and a quiet TensorFlow.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kzoo.recipes.sft import *  # noqa: E402, F403  (its names, for scripts that import this)
from kzoo.recipes.sft import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
