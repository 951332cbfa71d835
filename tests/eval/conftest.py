"""A tiny GPT written as a Hugging Face folder and as a kzoo run folder, made once a session."""

import os

import numpy as np
import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("lm_eval")

CONTEXT = 64  # short: the few-shot prompts of the arithmetic tasks get cut from the left


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """`hf` (a `save_hf` folder with its tokenizer) and `run` (model.keras + tokenizer/)."""
    import keras

    from kzoo.data.sources import pydocs_documents
    from kzoo.models import CausalLM
    from kzoo.tokenizers import BPETokenizer

    keras.utils.set_random_seed(3)
    root = tmp_path_factory.mktemp("tiny")
    tokenizer = BPETokenizer.train(pydocs_documents()[:12] + ["Question: 1 + 2 =\nAnswer: 3"],
                                   vocab_size=320)
    model = CausalLM.from_preset("gpt_nano", vocab_size=tokenizer.vocab_size,
                                 max_sequence_length=CONTEXT, initializer_range=0.3)
    model(np.zeros((1, 4), "int32"))
    model.save_hf(root / "hf", tokenizer=tokenizer)
    (root / "run").mkdir()
    model.save(root / "run" / "model.keras")
    tokenizer.save(root / "run" / "tokenizer")
    return {"hf": root / "hf", "run": root / "run", "model": model, "tokenizer": tokenizer}
