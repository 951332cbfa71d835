"""Write a run's model (and tokenizer) as a Hugging Face folder transformers loads.

The script form of `kzoo export-hf`; the code, its options and what the run writes are
`kzoo.recipes.export_hf` (`kzoo export-hf --help`).

    python recipes/export_hf.py runs/dpo exported/
    python recipes/export_hf.py runs/gpt_nano_pydocs exported/ --model-file best.keras
"""

import os
import sys

# Before kzoo is imported (it imports TensorFlow): the backend and a quiet TensorFlow.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kzoo.recipes.export_hf import *  # noqa: E402, F403  (its names, for scripts that import this)
from kzoo.recipes.export_hf import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
