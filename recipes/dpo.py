"""Direct preference optimisation (DPO family) on preference pairs, usually after SFT.

The script form of `kzoo dpo`: the code is `kzoo.recipes.dpo`.

    python recipes/dpo.py --config recipes/configs/gpt/baby_instruction_dpo.yaml
    python recipes/dpo.py --config CONFIG --set dpo.loss=ipo --set dpo.beta=0.5

The run folder holds config.yaml, tokenizer/, model.keras (the tuned policy),
policy.weights.h5 (the last good weights, written after every `train.eval_interval` steps),
metrics.csv (one row per interval: step, training and held-out metrics) and metrics.json
(the same history, the held-out implicit-reward accuracy before and after, the split and the
bad-pair counts). The
reference is the starting model: either a frozen copy (`dpo.reference: copy`) or log-probs
computed once before training (`dpo.reference: precomputed`, no second model in memory), or,
with `lora.enabled`, the same network with its adapters skipped (`adapters_off`, the default
then: no copy and no precomputed pass; model.keras holds the merged model, adapters.safetensors
the adapters). A NaN loss or reward stops training and restores the last good weights
(exit status 3).
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
