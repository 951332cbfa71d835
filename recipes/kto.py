"""KTO on unpaired thumbs up / down feedback, usually after SFT.

The script form of `kzoo kto`; the code, its options and what the run writes are
`kzoo.recipes.kto` (`kzoo kto --help`).

    python recipes/kto.py --config recipes/configs/gpt/baby_instruction_kto.yaml
    python recipes/kto.py --config CONFIG --set kto.undesirable_weight=1.33
"""

import os
import sys

# Before kzoo is imported (it imports TensorFlow): the backend and a quiet TensorFlow.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kzoo.recipes.kto import *  # noqa: E402, F403  (its names, for scripts that import this)
from kzoo.recipes.kto import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
