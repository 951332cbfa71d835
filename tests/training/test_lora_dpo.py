"""DPO with a LoRA policy: the reference is the same network with its adapters switched off."""

import math

import keras
import numpy as np
import pytest

from kzoo.alignment.dpo import ADAPTERS_OFF, DPOModel, frozen_copy, pair_logps
from kzoo.data.preference import preference_dataset
from kzoo.models import CausalLM
from kzoo.models.lora import adapter_weights

TINY = dict(vocab_size=16, num_layers=2, num_heads=2, hidden_dim=16, max_sequence_length=16)


def base_model(seed=0):
    keras.utils.set_random_seed(seed)
    return CausalLM(**TINY)


def pairs(n=8, length=12, prompt=4, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.zeros((n, 2, length), "float32")
    mask[:, :, prompt:] = 1.0
    return {"token_ids": rng.integers(0, TINY["vocab_size"], (n, 2, length)).astype("int32"),
            "loss_mask": mask, "lengths": np.full((n, 2), length, "int32")}


def randomize_adapters(model, seed=3):
    rng = np.random.default_rng(seed)
    for var in adapter_weights(model).values():
        var.assign(rng.normal(0, 0.3, var.shape).astype("float32"))


def fit(dpo, arrays, epochs=1):
    ds = preference_dataset(arrays, 4, shuffle=False)
    return dpo.fit(ds, epochs=epochs, verbose=0, shuffle=False).history


def lora_dpo(seed=0, rank=4):
    policy = base_model(seed)
    reference = frozen_copy(policy)  # the base, kept apart only to check against
    policy.enable_lora(rank)
    return policy, reference


def test_reference_is_the_base_model_without_adapters():
    policy, base = lora_dpo()
    randomize_adapters(policy)
    dpo = DPOModel(policy, reference=ADAPTERS_OFF)
    batch = pairs()
    ref = np.asarray(dpo._reference_logps(batch))
    np.testing.assert_allclose(ref, np.asarray(pair_logps(base, batch["token_ids"],
                                                          batch["loss_mask"])), atol=1e-5)
    assert np.abs(np.asarray(dpo(batch)) - ref).max() > 1e-2  # the policy itself differs


def test_training_keeps_the_reference_and_holds_no_second_copy():
    policy, base = lora_dpo()
    base_values = {v.path.split("/", 1)[1]: np.array(v) for v in base.weights}
    dpo = DPOModel(policy, reference=ADAPTERS_OFF, beta=0.5)
    assert {id(v) for v in dpo.weights} == {id(v) for v in policy.weights}
    assert {id(v) for v in dpo.trainable_weights} == {
        id(v) for v in adapter_weights(policy).values()}
    dpo.compile(optimizer=keras.optimizers.Adam(1e-2))
    arrays = pairs()
    first = fit(dpo, pairs(n=4))  # one step, taken while the policy is the reference
    np.testing.assert_allclose(first["loss"][0], math.log(2), rtol=1e-6)
    history = fit(dpo, arrays, epochs=4)
    assert history["loss"][-1] < math.log(2) - 0.05
    for var in policy.weights:  # the base weights did not move
        name = var.path.split("/", 1)[1]
        if name in base_values:
            np.testing.assert_array_equal(np.array(var), base_values[name], err_msg=name)
    ref = np.asarray(dpo._reference_logps(arrays))
    expected = np.asarray(pair_logps(base, arrays["token_ids"], arrays["loss_mask"]))
    np.testing.assert_allclose(ref, expected, atol=1e-5)


def test_same_training_as_a_frozen_copy_reference():
    arrays = pairs(seed=1)
    trained = []
    for mode in ("copy", ADAPTERS_OFF):
        policy, base = lora_dpo(seed=5)
        dpo = DPOModel(policy, reference=base if mode == "copy" else ADAPTERS_OFF, beta=0.5)
        dpo.compile(optimizer=keras.optimizers.Adam(1e-2))
        fit(dpo, arrays, epochs=2)
        trained.append({k: np.array(v) for k, v in adapter_weights(policy).items()})
    for name, value in trained[0].items():
        np.testing.assert_allclose(trained[1][name], value, atol=1e-5, err_msg=name)


class CountingDPO(DPOModel):
    traces = 0

    def _reference_logps(self, inputs):
        CountingDPO.traces += 1  # Python runs here only while a step is traced
        return super()._reference_logps(inputs)


def test_the_compiled_step_is_traced_once():
    policy, _ = lora_dpo()
    dpo = CountingDPO(policy, reference=ADAPTERS_OFF)
    dpo.compile(optimizer=keras.optimizers.Adam(1e-3))
    arrays = pairs(n=16)
    CountingDPO.traces = 0
    fit(dpo, arrays)  # 4 steps
    first = CountingDPO.traces
    fit(dpo, arrays, epochs=2)
    assert first == 1 and CountingDPO.traces == first


def test_bad_references_are_value_errors():
    with pytest.raises(ValueError, match="needs a policy with LoRA adapters"):
        DPOModel(base_model(), reference=ADAPTERS_OFF)
    policy, _ = lora_dpo()
    with pytest.raises(ValueError, match=r"Unknown `reference`: 'lora'.*'adapters_off'"):
        DPOModel(policy, reference="lora")
    assert DPOModel(policy, reference=ADAPTERS_OFF).get_config()["reference"] == ADAPTERS_OFF
