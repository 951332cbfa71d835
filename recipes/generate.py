"""Generate text from a run folder or a real model, streamed, or show the next-word odds.

The script form of `kzoo generate`; the code, its options and what the run writes are
`kzoo.recipes.generate` (`kzoo generate --help`).

    python recipes/generate.py --config recipes/configs/gpt/baby_shakespeare_char_generate.yaml
    python recipes/generate.py runs/gpt_nano_pydocs --prompt 'The "for" statement' \\
        --sampler top_p --top-p 0.9 --temperature 0.8 --max-new-tokens 200 --seed 0
    python recipes/generate.py runs/gpt_nano_pydocs --prompt "def " --next-word --k 10 \\
        --temperatures 0.5 1 2 --png next_word.png
"""

import os
import sys

# Before kzoo is imported (it imports TensorFlow): the backend and a quiet TensorFlow.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kzoo.recipes.generate import *  # noqa: E402, F403  (its names, for scripts that import this)
from kzoo.recipes.generate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
