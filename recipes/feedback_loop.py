"""The feedback loop in miniature: pre-train, sample, rate, DPO, measure -- on a CPU.

The script form of `kzoo feedback-loop`: the code is `kzoo.recipes.feedback_loop`.

    python recipes/feedback_loop.py --config recipes/configs/gpt/nano_arithmetic_dpo.yaml
    python recipes/feedback_loop.py --config CONFIG --set loop.rounds=3 --set loop.control=false

A small model is pre-trained on noisy addition ("07+13=20", right only part of the time);
completions sampled at temperature 1 are rated by an exact checker (is it the correct sum?);
the ratings become chosen/rejected pairs for DPO; the rate of correct answers on held-out
prompts is reported before and after, with the KL to the reference, the validation loss, the
held-out implicit-reward accuracy and a control run with shuffled preferences. See
`kzoo.alignment.feedback_loop` for the details. The run folder gets config.yaml, report.json
and report.md.
"""

import os
import sys

# Before kzoo is imported (it imports TensorFlow): the backend and a quiet TensorFlow.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kzoo.recipes.feedback_loop import *  # noqa: E402, F403  (its names, for scripts that import this)
from kzoo.recipes.feedback_loop import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
