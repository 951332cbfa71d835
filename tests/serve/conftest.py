"""A tiny gpt_nano (random weights, byte tokenizer, 128-token context) served on 127.0.0.1 by
an in-process `kzoo serve` app; one engine for the whole directory (its programs compile once)."""

import pytest

from tests.serve.helpers import Served


@pytest.fixture(scope="session")
def nano(tmp_path_factory):
    """(model, tokenizer, run folder) of a random-weight gpt_nano."""
    import keras

    from kzoo.models import CausalLM
    from kzoo.tokenizers import ByteTokenizer

    keras.utils.set_random_seed(0)
    model = CausalLM.from_preset("gpt_nano", vocab_size=257, max_sequence_length=128)
    root = tmp_path_factory.mktemp("serve_run")
    model.save(root / "model.keras")
    tokenizer = ByteTokenizer()
    tokenizer.save(root / "tokenizer")
    return model, tokenizer, root


@pytest.fixture(scope="session")
def engine(nano):
    from kzoo.serve.engine import Engine

    model, tokenizer, _ = nano
    engine = Engine(model, tokenizer, slots=4, max_queue=16)
    engine.start()
    yield engine
    engine.stop()


@pytest.fixture(scope="session")
def served(engine, nano):
    server = Served(engine, nano[1])
    yield server
    server.stop()


@pytest.fixture(scope="session")
def client(served):
    import openai

    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0,
                         timeout=60)
