"""KTO on unpaired thumbs up / down feedback, usually after SFT.

The script form of `kzoo kto`: the code is `kzoo.recipes.kto`.

    python recipes/kto.py --config recipes/configs/gpt/baby_instruction_kto.yaml
    python recipes/kto.py --config CONFIG --set kto.undesirable_weight=1.33

The data is a file of `{prompt, completion, label}` records (`data.unpair: false`) or of
preference pairs that the recipe unpairs (`data.unpair: true`: chosen = up, rejected = down,
shuffled), after splitting the pairs by prompt exactly as the DPO recipe does. Each training
batch's KL rows are its completions shifted by one under the batch's prompts
(`kzoo.data.unpaired.with_kl_rows`); batches keep one order across epochs, as TRL's
sequential sampling. The reference is the starting model, as in `recipes/dpo.py`: log-probs
computed once (`kto.reference: precomputed`), a frozen copy (`copy`), or with `lora.enabled`
the network with its adapters skipped (`adapters_off`, the default then).

The run folder holds config.yaml, tokenizer/, model.keras, policy.weights.h5 (the last good
weights), metrics.csv (one row per `train.eval_interval` steps) and metrics.json: the split,
label and bad-record counts, the held-out KTO metrics before and after, and the held-out
implied-reward accuracy (beta * log-ratio of chosen above rejected, on the held-out pairs, as
DPO's `rewards/accuracy`). A NaN or exploding loss stops training and keeps the last good
weights (exit status 3).
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
