"""Direct preference optimisation (DPO family) on preference pairs, usually after SFT.

The script form of `kzoo dpo`; the code, its options and what the run writes are
`kzoo.recipes.dpo` (`kzoo dpo --help`).

    python recipes/dpo.py --config recipes/configs/gpt/baby_instruction_dpo.yaml
    python recipes/dpo.py --config CONFIG --set dpo.loss=ipo --set dpo.beta=0.5
"""

import os
import sys

# Before kzoo is imported (it imports TensorFlow): the backend and a quiet TensorFlow.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kzoo.recipes.dpo import *  # noqa: E402, F403  (its names, for scripts that import this)
from kzoo.recipes.dpo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
