"""Write a run's model (and tokenizer) as a Hugging Face folder transformers loads.

The script form of `kzoo export-hf`: the code is `kzoo.recipes.export_hf`.

    python recipes/export_hf.py runs/dpo exported/
    python recipes/export_hf.py runs/gpt_nano_pydocs exported/ --model-file best.keras

RUN_DIR is a kzoo run folder (pretrain, SFT or DPO): its model file (default model.keras)
becomes config.json, generation_config.json and model.safetensors, in the model's own dtype.
Its tokenizer/ comes along when it has a Hugging Face form (a tokenizer loaded from a Hugging
Face folder, or a kzoo BPE, written with kzoo's chat template); a byte or char tokenizer has
none, and the folder is written without one (said on stdout). OUT_DIR must be new or empty:
the folder is written beside it under a temporary name and renamed when complete, so a failed
export leaves nothing. Bad input is one `error: ...` line on stderr and exit code 2.
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
