"""LoRA adapters on CausalLM: what trains, merging, saving alone and with the model, int8 bases."""

import json
import warnings

import keras
import numpy as np
import pytest
from keras import ops

from kzoo.layers import TransformerBlock
from kzoo.models import CausalLM
from kzoo.models.lora import (
    TARGETS,
    adapter_weights,
    enable_lora,
    load_lora,
    lora_disabled,
    resolve_targets,
)
from kzoo.training.config import config_from_dict
from kzoo.training.lora import LoRAConfig, apply_lora_config
from tests.helpers import value_and_grads

VOCAB = 48


def nano(seed=0, **overrides):
    keras.utils.set_random_seed(seed)
    return CausalLM.from_preset("gpt_nano", vocab_size=VOCAB, max_sequence_length=32,
                                **overrides)


def ids(rows=3, length=10, seed=1):
    return np.random.default_rng(seed).integers(0, VOCAB, (rows, length)).astype("int32")


def randomize_adapters(model, seed=2, std=0.2):
    rng = np.random.default_rng(seed)
    for var in adapter_weights(model).values():
        var.assign(rng.normal(0, std, var.shape).astype("float32"))


def logits(model, x):
    return np.asarray(model(x), "float64")


def test_only_adapters_are_trainable_and_only_they_change():
    model = nano()
    base = {v.path: np.array(v) for v in model.weights}
    model.enable_lora(4)
    adapters = adapter_weights(model)
    assert len(adapters) == 2 * len(TARGETS) * model.num_layers
    assert {id(v) for v in model.trainable_weights} == {id(v) for v in adapters.values()}
    before = {name: np.array(v) for name, v in adapters.items()}
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x = ids(8, 12)
    model.fit(x[:, :-1], x[:, 1:], batch_size=4, epochs=1, verbose=0)  # 2 steps: A moves too
    for var in model.weights:
        if var.path in base:
            np.testing.assert_array_equal(np.array(var), base[var.path], err_msg=var.path)
    for name, var in adapters.items():
        assert not np.array_equal(np.array(var), before[name]), name


def test_fresh_adapters_change_nothing_and_scale_is_alpha_over_rank():
    model = nano()
    x = ids()
    plain = logits(model, x)
    model.enable_lora(4, alpha=12)
    np.testing.assert_array_equal(logits(model, x), plain)  # B starts at zero
    randomize_adapters(model)
    dense = model.blocks[0].attention.query_key_value
    h = np.random.default_rng(0).normal(size=(2, 5, model.hidden_dim)).astype("float32")
    kernel = np.array(dense._kernel) + 3.0 * np.array(dense.lora_kernel_a) @ np.array(
        dense.lora_kernel_b)
    np.testing.assert_allclose(np.asarray(dense(h)), h @ kernel + np.array(dense.bias),
                               rtol=1e-5, atol=1e-5)
    assert model.lora_spec.scale == 3.0


def test_targets_groups_and_refusals():
    assert resolve_targets("ffn") == ("up", "down")
    assert resolve_targets(["down", "attention"]) == ("query_key_value", "attention_output",
                                                      "down")
    with pytest.raises(ValueError, match=r"Unknown LoRA target 'c_attn'.*query_key_value"):
        nano().enable_lora(4, targets=["c_attn"])
    with pytest.raises(ValueError, match=r"`dropout` must be a number in \[0, 1\)"):
        nano().enable_lora(4, dropout=1.0)
    with pytest.raises(ValueError, match="`rank` must be a positive integer"):
        nano().enable_lora(0)
    model = nano().enable_lora(2, targets="attention")
    assert {k.split("/")[-2] for k in adapter_weights(model)} == {"query_key_value",
                                                                   "attention_output"}
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        model.enable_lora(2)


def test_lora_on_a_single_block():
    block = TransformerBlock(hidden_dim=16, num_heads=2, intermediate_dim=32)
    block.build((None, None, 16))
    enable_lora(block, 2, targets="ffn")
    trainable = sorted(v.path.split("/", 1)[1] for v in block.trainable_weights)
    assert trainable == [f"feedforward/{d}/lora_kernel_{m}" for d in ("down", "up")
                         for m in "ab"]
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        enable_lora(block.feedforward, 2)  # the block put them there
    other = TransformerBlock(hidden_dim=16, num_heads=2, intermediate_dim=32)
    other.build((None, None, 16))
    with pytest.raises(ValueError, match="'feedforward' has no Dense layer for LoRA target"):
        enable_lora(other.feedforward, 2, targets="query_key_value")


def test_lora_disabled_gives_the_base_model():
    model = nano()
    x = ids()
    plain = logits(model, x)
    model.enable_lora(4)
    randomize_adapters(model)
    assert np.abs(logits(model, x) - plain).max() > 1e-2
    with lora_disabled(model):
        np.testing.assert_allclose(logits(model, x), plain, atol=1e-5)
    assert np.abs(logits(model, x) - plain).max() > 1e-2  # adapters back on


def test_merge_keeps_logits_removes_adapters_and_exports_to_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = nano()
    n_weights, n_trainable = len(model.weights), len(model.trainable_weights)
    model.enable_lora(4)
    randomize_adapters(model)
    x = ids()
    tuned = logits(model, x)
    model.merge_lora()
    np.testing.assert_allclose(logits(model, x), tuned, atol=1e-5)
    assert model.lora_spec is None
    assert len(model.weights) == n_weights and len(model.trainable_weights) == n_trainable
    assert not any("lora" in v.path for v in model.weights)
    model.save_hf(tmp_path / "hf")
    np.testing.assert_allclose(logits(CausalLM.from_hf(tmp_path / "hf"), x), tuned, atol=1e-5)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        theirs = hf(torch.tensor(x, dtype=torch.long)).logits.double().numpy()
    np.testing.assert_allclose(theirs, tuned, atol=1e-4)


def test_save_and_load_adapters_alone(tmp_path):
    model = nano()
    model.enable_lora(2, alpha=4)
    randomize_adapters(model)
    x = ids()
    tuned = logits(model, x)
    path = model.save_lora(tmp_path / "adapters.safetensors")
    full = sum(int(np.prod(v.shape)) * 4 for v in model.weights if "lora" not in v.path)
    assert path.stat().st_size < 0.05 * full
    fresh = nano()  # same seed: the same base weights
    fresh.load_lora(path)
    assert fresh.lora_spec.as_dict() == {"rank": 2, "alpha": 4.0, "targets": list(TARGETS)}
    np.testing.assert_allclose(logits(fresh, x), tuned, atol=1e-6)
    # onto a model whose adapters already match: same result
    again = nano().enable_lora(2, alpha=4)
    np.testing.assert_allclose(logits(load_lora(again, path), x), tuned, atol=1e-6)


def test_load_lora_refusals(tmp_path):
    model = nano().enable_lora(2)
    path = model.save_lora(tmp_path / "a.safetensors")
    wide = CausalLM.from_preset("gpt_nano", vocab_size=VOCAB, hidden_dim=32, num_heads=2)
    with pytest.raises(ValueError, match=r"a.safetensors: tensor 'block_0/attention/"
                       r"attention_output/lora_kernel_a' has shape \(64, 2\); the model's "
                       r"is \(32, 2\)"):
        wide.load_lora(path)
    assert wide.lora_spec is None  # refused before any change
    deeper = CausalLM.from_preset("gpt_nano", vocab_size=VOCAB, num_layers=3)
    with pytest.raises(ValueError, match="lacks adapter tensor 'block_2/"):
        deeper.load_lora(path)
    with pytest.raises(ValueError, match=r"holds adapters .*'rank': 2.*has \{'rank': 4"):
        nano().enable_lora(4).load_lora(path)
    from kzoo.interop.safetensors_io import write_safetensors
    other = write_safetensors(tmp_path / "w.safetensors", {"w": np.ones(2, "float32")})
    with pytest.raises(ValueError, match="w.safetensors is not a kzoo LoRA file"):
        nano().load_lora(other)


def test_keras_file_merges_and_loads_in_safe_mode(tmp_path):
    model = nano()
    model.enable_lora(4)
    randomize_adapters(model)
    model.compile(optimizer="adam")
    x = ids()
    model.fit(x[:, :-1], x[:, 1:], epochs=1, verbose=0)
    tuned = logits(model, x)
    model.save(tmp_path / "m.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optimizer slots of a different variable set
        loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert loaded.lora_spec is None and not any("lora" in v.path for v in loaded.weights)
    np.testing.assert_allclose(logits(loaded, x), tuned, atol=1e-5)
    assert model.lora_spec is not None  # saving does not change the model


def test_load_weights_on_a_lora_model_is_refused(tmp_path):
    model = nano()
    model.save_weights(tmp_path / "w.weights.h5")
    model.enable_lora(2)
    with pytest.raises(ValueError, match="w.weights.h5.*Keras would zero them"):
        model.load_weights(tmp_path / "w.weights.h5")


def test_reward_model_backbone_lora_keeps_the_head_trainable():
    from kzoo.alignment.reward import RewardModel

    rm = RewardModel(nano())
    apply_lora_config(rm.backbone, LoRAConfig(enabled=True, rank=2))
    names = {v.path for v in rm.trainable_weights}
    assert {v.path for v in adapter_weights(rm.backbone).values()} < names
    assert names - {v.path for v in adapter_weights(rm.backbone).values()} == {
        rm.head.kernel.path, rm.head.bias.path}


def test_lora_config_checks():
    cfg = config_from_dict({"enabled": True, "rank": 4, "targets": ["ffn"]}, LoRAConfig,
                           source="x.yaml")
    assert (cfg.rank, cfg.targets, cfg.alpha) == (4, ["ffn"], None)
    with pytest.raises(ValueError, match=r"x.yaml: key 'targets\[1\]' must be one of"):
        config_from_dict({"targets": ["up", "c_attn"]}, LoRAConfig, source="x.yaml")
    with pytest.raises(ValueError, match=r"x.yaml: key 'dropout' must be in \[0, 1\)"):
        config_from_dict({"dropout": 1.5}, LoRAConfig, source="x.yaml")
    with pytest.raises(ValueError, match="x.yaml: key 'rank' must be > 0"):
        config_from_dict({"rank": 0}, LoRAConfig, source="x.yaml")
    model = nano()
    assert apply_lora_config(model, LoRAConfig()) is model and model.lora_spec is None


# ------------------------------------------------------------------------ int8 base + LoRA
def rule_rows(n, seed, length=17):
    """Rows of the rule t[i+1] = (t[i] + 5) % VOCAB from random starts: a task the random
    base cannot do, learnable through the adapters."""
    starts = np.random.default_rng(seed).integers(0, VOCAB, (n, 1))
    return ((starts + 5 * np.arange(length)[None]) % VOCAB).astype("int32")


def heldout_loss(model, rows):
    lp = keras.ops.log_softmax(model(rows[:, :-1]), axis=-1)
    picked = np.take_along_axis(np.asarray(lp), rows[:, 1:, None], axis=-1)
    return float(-picked.mean())


def lora_gain(quantize):
    model = nano(seed=3)
    apply_lora_config(model, LoRAConfig(enabled=True, rank=8, quantize=quantize))
    train, held = rule_rows(64, seed=4), rule_rows(32, seed=5)
    before = heldout_loss(model, held)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(train[:, :-1], train[:, 1:], batch_size=16, epochs=10, shuffle=False, verbose=0)
    return model, before - heldout_loss(model, held), held


def test_int8_lora_learns_as_well_as_float_lora_and_exports_to_float():
    float_model, float_gain, held = lora_gain(None)
    int8_model, int8_gain, _ = lora_gain("int8")
    assert int8_model.blocks[0].feedforward.up.quantization_mode == "int8"
    # The int8 base differs from the float one by per-channel rounding (~0.4% of each
    # channel's largest weight) and the inputs are quantized per token, so the two runs take
    # nearly the same path: gains within 10%. A collapse (adapters that get no gradient, or
    # an update lost at merge) gives a gain near 0.
    assert float_gain > 0.5, float_gain  # the task is learnt at all (about 1.0 nats)
    assert abs(int8_gain - float_gain) <= 0.1 * float_gain, (int8_gain, float_gain)
    merged = int8_model.merged_copy()
    assert merged.lora_spec is None
    assert merged.blocks[0].feedforward.up.quantization_mode is None
    # The float export keeps the learnt update (only the activation rounding is gone).
    assert abs(heldout_loss(merged, held) - heldout_loss(int8_model, held)) < 0.02 * float_gain
    with pytest.raises(ValueError, match="is quantized; use merged_copy"):
        int8_model.merge_lora()
    spec = json.dumps(int8_model.lora_spec.as_dict())
    assert '"rank": 8' in spec


def test_generation_with_trained_adapters_uses_them():
    """The prepared decode path reads each Dense's `kernel`: with adapters that must be the
    kernel plus its update, as the model's own forward pass computes it."""
    import keras
    import numpy as np

    from kzoo.models import CausalLM

    keras.utils.set_random_seed(3)
    model = CausalLM.from_preset("gpt_nano", vocab_size=64, max_sequence_length=32)
    plain = model.generate([[1, 2, 3]], max_new_tokens=12, stop_token_ids=[]).token_ids
    model.enable_lora(4)
    for dense in model._flatten_layers():
        if getattr(dense, "lora_enabled", False):  # non-zero adapters change the output
            dense.lora_kernel_b.assign(np.random.default_rng(0).normal(
                0, 0.5, dense.lora_kernel_b.shape).astype("float32"))
    tuned = model.generate([[1, 2, 3]], max_new_tokens=12, stop_token_ids=[])
    reference = model.generate([[1, 2, 3]], max_new_tokens=12, stop_token_ids=[],
                               weights="reference")
    assert tuned.token_ids == reference.token_ids
    assert tuned.token_ids != plain


def test_generation_after_quantize_uses_the_quantized_model():
    import warnings

    import keras

    from kzoo.models import CausalLM

    keras.utils.set_random_seed(4)
    model = CausalLM.from_preset("gpt_nano", vocab_size=64, max_sequence_length=32)
    model.generate([[1, 2, 3]], max_new_tokens=6, stop_token_ids=[])  # traced on float kernels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.quantize("int8")
    again = model.generate([[1, 2, 3]], max_new_tokens=6, stop_token_ids=[],
                           return_logprobs=True)
    reference = model.generate([[1, 2, 3]], max_new_tokens=6, stop_token_ids=[],
                               weights="reference", return_logprobs=True)
    assert again.token_ids == reference.token_ids
    assert np.allclose(again.logprobs, reference.logprobs, atol=1e-5)


def test_factored_update_equals_keras_merged_kernel_and_its_gradients():
    """kzoo's Projection computes x W + s (x A) B; Keras' Dense computes x (W + s A B): the same
    outputs and adapter gradients, without a full-size update matrix."""

    from kzoo.layers.projection import Projection

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 16)).astype("float32")
    ours, theirs = Projection(24, use_bias=True), keras.layers.Dense(24, use_bias=True)
    for layer in (ours, theirs):
        layer.build((None, None, 16))
    theirs.set_weights(ours.get_weights())
    for layer in (ours, theirs):
        layer.enable_lora(4, lora_alpha=8)
    b = rng.normal(size=(4, 24)).astype("float32")
    theirs.lora_kernel_a.assign(ours.lora_kernel_a)
    for layer in (ours, theirs):
        layer.lora_kernel_b.assign(b)
    grads = []
    for layer in (ours, theirs):
        def loss_of(a, b_value, layer=layer):
            # The adapter matrices given as values: the gradient is the same on every backend.
            with keras.StatelessScope([(layer.lora_kernel_a, a), (layer.lora_kernel_b, b_value)]):
                out = layer(x)
            return ops.sum(out * out)

        _, grad = value_and_grads(loss_of, np.asarray(layer.lora_kernel_a), b)
        grads.append((np.asarray(layer(x)), grad))
    np.testing.assert_allclose(grads[0][0], grads[1][0], atol=1e-4)
    for g_ours, g_theirs in zip(grads[0][1], grads[1][1]):
        np.testing.assert_allclose(g_ours, g_theirs, rtol=1e-4, atol=1e-3)


def test_lora_dropout_drops_the_adapter_input_in_training_only():
    model = nano()
    model.enable_lora(4, dropout=0.5)
    for dense in model._flatten_layers():
        if getattr(dense, "lora_enabled", False):
            dense.lora_kernel_b.assign(np.ones(dense.lora_kernel_b.shape, "float32"))
    ids = np.arange(12, dtype="int32").reshape(2, 6) % 50
    inference = [np.asarray(model(ids, training=False)) for _ in range(2)]
    np.testing.assert_array_equal(*inference)  # no dropout at inference
    training = [np.asarray(model(ids, training=True)) for _ in range(2)]
    assert not np.allclose(training[0], training[1])  # fresh masks each call
    with model.lora_disabled():  # the base: no adapter, hence no dropout either
        base = [np.asarray(model(ids, training=True)) for _ in range(2)]
    np.testing.assert_array_equal(*base)
    with pytest.raises(ValueError, match="remat=True"):
        nano(remat=True).enable_lora(4, dropout=0.1)
