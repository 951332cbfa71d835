"""Supervised fine-tuning (SFT) on instruction data, loss on response tokens only.

The script form of `kzoo sft`: the code is `kzoo.recipes.sft`.

    python recipes/sft.py --config recipes/configs/gpt/baby_instruction_sft.yaml
    python recipes/sft.py --config CONFIG --set train.epochs=1 --set run_dir=runs/x

The run folder holds config.yaml, tokenizer/, model.keras and metrics.json (train and held-out
response loss per epoch, the split sizes). With `lora.enabled` only low-rank adapters train
(`lora.quantize: int8` puts them on an int8 base); model.keras then holds the merged float
model and adapters.safetensors the adapters alone. The held-out prompts are chosen by a seeded
hash of the prompt (`kzoo.data.instruction.split_records`), so `recipes/dpo.py` with the same
`validation_fraction` and `split_seed` holds out the same prompts.
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
