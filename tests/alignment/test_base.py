"""`kzoo.alignment.base.PolicyModel`, what DPO, KTO, ORPO and the policy-gradient model share,
and the recipe pieces the preference recipes share (`kzoo.training.recipe`)."""

import warnings

import keras
import numpy as np
import pytest

from kzoo.alignment import DPOModel, KTOModel, ORPOModel, PolicyGradientModel
from kzoo.alignment.base import PolicyModel, frozen_copy, pair_values
from kzoo.models import CausalLM
from kzoo.training.recipe import REFERENCE_MODES, reference_mode

TINY = dict(vocab_size=16, num_layers=1, num_heads=2, hidden_dim=16, max_sequence_length=16)


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    return CausalLM(**TINY)


def test_every_alignment_model_is_a_policy_model():
    for cls in (DPOModel, KTOModel, ORPOModel, PolicyGradientModel):
        assert issubclass(cls, PolicyModel), cls
    assert DPOModel.takes_reference and KTOModel.takes_reference
    assert not ORPOModel.takes_reference and not PolicyGradientModel.takes_reference


@pytest.mark.parametrize("make, optimizer", [
    (lambda p: DPOModel(p), keras.optimizers.AdamW),
    (lambda p: PolicyGradientModel(p), keras.optimizers.Adam),
])
def test_compile_with_no_optimizer_builds_the_default_slots(make, optimizer):
    model = make(tiny_model())
    model.compile()
    assert isinstance(model.optimizer, optimizer)
    assert model.optimizer.built  # slots made at compile, not inside the first step


def test_need_names_the_model_the_key_and_the_batch():
    with pytest.raises(ValueError, match=r"DPOModel needs 'reference_logps' in every batch "
                                         r"\(reference=None.*Batch keys: \['loss_mask', "
                                         r"'token_ids'\]"):
        DPOModel(tiny_model())._reference_logps({"token_ids": 0, "loss_mask": 0})


def test_reference_is_frozen_and_round_trips_in_the_config():
    policy = tiny_model()
    reference = tiny_model(1)
    model = DPOModel(policy, reference, beta=0.2)
    assert not reference.trainable and policy.trainable
    restored = DPOModel.from_config(model.get_config())
    assert isinstance(restored.reference, CausalLM) and not restored.reference.trainable
    assert restored.get_config()["beta"] == 0.2
    assert "reference" not in PolicyGradientModel(policy).get_config()


def test_a_saved_dpo_model_loads_compiled(tmp_path):
    policy = tiny_model()
    model = DPOModel(policy, frozen_copy(policy))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
    model.save(tmp_path / "dpo.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Keras warns when it cannot restore compile()
        loaded = keras.saving.load_model(tmp_path / "dpo.keras")
    assert isinstance(loaded.optimizer, keras.optimizers.Adam)
    np.testing.assert_allclose(loaded.optimizer.learning_rate, 1e-3, rtol=1e-6)


def test_kto_takes_loss_and_still_reads_loss_type():
    policy = tiny_model()
    model = KTOModel(policy, loss="apo_zero_unpaired")
    assert model.get_config()["loss"] == "apo_zero_unpaired" and not model.uses_kl
    with pytest.warns(DeprecationWarning, match="use loss="):
        old = KTOModel(policy, loss_type="apo_zero_unpaired")
    assert old.loss_type == "apo_zero_unpaired"
    # A config saved before the rename (key `loss_type`) loads, with no warning.
    config = {**model.get_config()}
    config["loss_type"] = config.pop("loss")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert KTOModel.from_config(config).loss_name == "apo_zero_unpaired"


def test_pair_values_compare_chosen_with_rejected():
    values = pair_values(np.array([[1.0, 0.5], [0.0, 0.0]], "float32"),
                         np.array([[-1.0, -2.0], [-3.0, -4.0]], "float32"))
    np.testing.assert_array_equal(np.asarray(values["rewards/accuracy"]), [1.0, 0.0])
    np.testing.assert_allclose(np.asarray(values["rewards/margin"]), [0.5, 0.0])
    np.testing.assert_allclose(np.asarray(values["logps/rejected"]), [-2.0, -4.0])


@pytest.mark.parametrize("mode, lora, want", [
    ("auto", True, "adapters_off"), ("auto", False, "precomputed"), ("copy", False, "copy"),
    ("adapters_off", True, "adapters_off"), ("precomputed", True, "precomputed"),
])
def test_reference_mode_resolves_auto(mode, lora, want):
    assert reference_mode("dpo", mode, lora) == want


@pytest.mark.parametrize("mode, lora, match", [
    ("twin", False, r"kto.reference must be one of \['auto', 'precomputed', 'copy', "
                    r"'adapters_off'\]. Received: 'twin'"),
    ("adapters_off", False, "kto.reference: adapters_off needs lora.enabled: true"),
])
def test_reference_mode_refuses_in_one_line(mode, lora, match):
    with pytest.raises(ValueError, match=match) as error:
        reference_mode("kto", mode, lora)
    assert "\n" not in str(error.value) and len(REFERENCE_MODES) == 4
