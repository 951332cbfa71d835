"""Token ids outside the vocabulary, given to an eager `model(...)` call: a ValueError naming the
id and where it is, not TensorFlow's raw InvalidArgumentError from the embedding gather (on a
GPU the gather returns zeros instead, silently). Compiled calls are not checked."""

import numpy as np
import pytest
from keras import ops

from kzoo import backend
from kzoo.models import CausalLM


@pytest.fixture(scope="module")
def model():
    return CausalLM.from_preset("gpt_nano", vocab_size=20, max_sequence_length=16)


@pytest.mark.parametrize("make", [np.array, ops.convert_to_tensor,
                                  lambda ids: np.array(ids, "int64")],
                         ids=["numpy", "eager", "int64"])
def test_an_id_past_the_vocabulary_names_it(model, make):
    with pytest.raises(ValueError) as info:
        model(make([[1, 2, 3], [4, 25, 6]]))
    assert str(info.value) == ("token id 25 at [1, 1] is outside the vocabulary of this model: "
                               "ids must be in [0, 20) (vocab_size=20)")


def test_negative_ids_dict_inputs_and_the_cache_path(model):
    with pytest.raises(ValueError, match=r"token id -1 at \[0, 0\] is outside the vocabulary"):
        model({"token_ids": np.array([[-1, 2]]), "padding_mask": np.ones((1, 2), "int32")})
    with pytest.raises(ValueError, match=r"token id 20 at \[0, 1\]"):
        model.hidden_states(np.array([[0, 20]]))
    with pytest.raises(ValueError, match=r"token id 99 at \[0, 0\]"):
        model.call_with_cache(np.array([[99]]), model.init_cache(1, 8), 0)


def test_good_ids_pass_and_compiled_calls_are_not_checked(model):
    ids = np.array([[0, 19, 5]])
    eager = np.asarray(model(ids))
    compiled = backend.compile_function(lambda x: model(x), lambda: model.variables)
    # symbolic inside (tf.function, jax.jit): no values to check
    np.testing.assert_allclose(ops.convert_to_numpy(compiled(ops.convert_to_tensor(ids))),
                               eager, atol=1e-5)
    assert model(np.zeros((2, 0), "int32")).shape == (2, 0, 20)  # nothing to check
