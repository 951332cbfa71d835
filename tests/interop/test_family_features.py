"""What every family gets, on the Qwen3 and Gemma 3 nano presets: LoRA (a fit step moves only
the adapters; adapters saved alone load onto the same base; merged, the model exports to a
transformers checkpoint computing the tuned logits), int8 generation weights (the same greedy
tokens as float for the first steps, logits within the int8 bound), and the attention picture
on a sliding layer (the window's zeros, and the picture reproduces the layer's output)."""

import keras
import numpy as np
import pytest

from kzoo.models import CausalLM
from kzoo.models.lora import adapter_weights

PRESETS = ("qwen3_nano", "gemma3_nano")
VOCAB = 64


def nano(preset, seed=0, perturb=True, **overrides):
    keras.utils.set_random_seed(seed)
    model = CausalLM.from_preset(preset, vocab_size=VOCAB, **overrides)
    if not perturb:
        return model
    # norm scales start at 1 (or 0 under Gemma's 1 + w): move every weight so a copy that
    # misses one shows
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(np.asarray(w) + rng.normal(0, 0.1, w.shape).astype("float32"))
    return model


def ids(rows=3, length=10, seed=1):
    return np.random.default_rng(seed).integers(0, VOCAB, (rows, length)).astype("int32")


@pytest.mark.parametrize("preset", PRESETS)
def test_lora_trains_only_adapters_and_they_save_alone_and_export_merged(preset, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = nano(preset)
    base = {v.path: np.array(v) for v in model.weights}
    model.enable_lora(2, alpha=4.0, targets="all")
    adapters = adapter_weights(model)
    assert {id(v) for v in model.trainable_weights} == {id(v) for v in adapters.values()}
    before = {name: np.array(v) for name, v in adapters.items()}
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x = ids(8, 12)
    model.fit(x[:, :-1], x[:, 1:], batch_size=4, epochs=1, verbose=0)  # 2 steps: A moves too
    for var in model.weights:
        if var.path in base:
            np.testing.assert_array_equal(np.array(var), base[var.path], err_msg=var.path)
    assert all(not np.array_equal(np.array(v), before[n]) for n, v in adapters.items())
    tuned = np.asarray(model(x), "float64")
    fresh = nano(preset)  # the same base weights
    assert np.abs(np.asarray(fresh(x)) - tuned).max() > 1e-4  # the adapters changed something
    fresh.load_lora(model.save_lora(tmp_path / "adapters.safetensors"))
    np.testing.assert_allclose(np.asarray(fresh(x)), tuned, atol=1e-5)
    model.merge_lora()
    model.save_hf(tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        theirs = hf(torch.tensor(x, dtype=torch.long)).logits.double().numpy()
    np.testing.assert_allclose(theirs, tuned, atol=1e-4)


@pytest.mark.parametrize("preset", PRESETS)
def test_int8_generation_follows_float_greedy(preset):
    from kzoo.generation import Generator, quantize_for_generation
    from kzoo.generation.decoders import prepared_logits

    # a short window, so the 40 generated tokens run past it in the cached decoder; the
    # preset's own initial weights, as the int8 bound of tests/layers measures them
    model = nano(preset, perturb=False, sliding_window=8)
    prompts = [[5, 9, 2, 7, 1, 3, 8, 4, 11, 12], [6, 2]]
    floats = Generator(model, "greedy").generate(prompts, max_new_tokens=40).token_ids
    int8 = Generator(model, "greedy", weights="int8").generate(prompts, max_new_tokens=40)
    for f, q in zip(floats, int8.token_ids):
        assert len(q) == 40 and q[:3] == f[:3]
    # The prepared decoder with float32 weights is the model exactly, so what int8 changes is
    # the rounding alone: logits near the float ones, nearer than their own spread. Measured
    # max |int8 - float| / std: llama_nano 0.035, qwen3_nano 0.041, gemma3_nano 0.12 (its
    # post norms bring every branch to unit size, so rounding weighs more at init).
    x = np.array([prompts[0] * 2])
    ref = np.asarray(model(x))
    same = np.asarray(prepared_logits(model, x, quantize_for_generation(model, "float32")))
    np.testing.assert_allclose(same, ref, atol=1e-5)
    q8 = np.asarray(prepared_logits(model, x, quantize_for_generation(model, "int8")))
    assert 0 < np.abs(q8 - ref).max() < 0.25 * ref.std()


@pytest.mark.parametrize("preset", PRESETS)
def test_attention_picture_of_a_sliding_layer(preset, tmp_path):
    from kzoo.viz import model_attention, plot_attention
    from kzoo.viz.attention import attention_output

    window = 3
    types = ["sliding_attention", "full_attention"]
    model = nano(preset, sliding_window=window, layer_types=types)
    x = ids(1, 9)
    patterns, hidden = model_attention(model, x, return_hidden_states=True)
    local, glob = patterns[0][0], patterns[1][0]  # (heads, queries, keys)
    assert np.all(local[:, np.tril_indices(9, -window)[0], np.tril_indices(9, -window)[1]] == 0)
    assert np.all(local[:, np.arange(9), np.arange(9)] > 0)
    assert np.all(glob[:, np.tril_indices(9)[0], np.tril_indices(9)[1]] > 0)
    np.testing.assert_allclose(local.sum(-1), 1.0, atol=1e-5)
    # the picture is the layer's own computation: finishing it gives the layer's output
    block = model.blocks[0]
    normed = block.attention_norm(model.embed(x))
    np.testing.assert_allclose(
        np.asarray(attention_output(block.attention, normed, patterns[0])),
        np.asarray(block.attention(normed)), atol=1e-5)
    path = plot_attention(patterns[0][0], [str(t) for t in x[0]], tmp_path / "local.png")
    assert path.stat().st_size > 0
