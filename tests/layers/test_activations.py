"""The activation registry: GELU's two forms against PyTorch's, the one-line refusal naming the
argument, and gated activations computed in float32 whatever the default float."""

import keras
import numpy as np
import pytest
import torch
from keras import ops

from kzoo.layers import get_activation
from kzoo.layers.activations import is_gated

X = np.linspace(-4.0, 4.0, 17, dtype="float32") + 0.0123


@pytest.mark.parametrize("name, approximate", [("gelu", "tanh"), ("gelu_exact", "none")])
def test_gelu_forms_match_pytorch(name, approximate):
    expected = torch.nn.functional.gelu(torch.from_numpy(X), approximate=approximate).numpy()
    got = np.asarray(get_activation(name)(ops.convert_to_tensor(X)))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("ask", [get_activation, is_gated])
def test_an_unknown_activation_is_one_line_naming_the_argument(ask):
    with pytest.raises(ValueError, match=r"^Unknown `activation`: 'nope'. Valid values: \["):
        ask("nope")


def test_gated_activations_compute_in_float32_whatever_the_default_float():
    # SiLU's small negative tail is lost in bfloat16: the gate is computed in float32 even
    # when the default float (what a cast to None would give) is bfloat16.
    old = keras.config.floatx()
    keras.config.set_floatx("bfloat16")
    try:
        out = get_activation("swiglu")(ops.convert_to_tensor(X, "float32"),
                                       ops.convert_to_tensor(np.ones_like(X), "float32"))
        out = np.asarray(ops.cast(out, "float32"))
    finally:
        keras.config.set_floatx(old)
    np.testing.assert_allclose(out, X / (1.0 + np.exp(-X)), rtol=1e-5, atol=1e-6)
