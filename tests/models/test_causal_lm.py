import json
import subprocess
import sys

import keras
import numpy as np
import pytest

import kzoo
from kzoo.models import CausalLM, get_preset, list_presets
from kzoo.models.families import list_families

# Each registered family's "_nano" preset: registering a family with one gets it tested here.
FAMILIES = [name for family in list_families() for name in family.presets
            if name.endswith("_nano")]


def _model(preset, **kw):
    return CausalLM.from_preset(preset, vocab_size=61, max_sequence_length=24, **kw)


def test_presets_listed_and_buildable():
    presets = list_presets()
    assert {"gpt_nano", "gpt_baby", "gpt2_124m", "llama_nano", "llama_124m"} <= set(presets)
    assert all(isinstance(d, str) and d for d in presets.values())
    for name in presets:
        if name.endswith(("124m", "mini")) or get_preset(name)["vocab_size"] > 100_000:
            # built below / in benchmarks; construction is the same code path. The published
            # shapes (Qwen3 0.6B, Gemma 3 270M / 1B) are counted in test_family_presets.py.
            continue
        CausalLM.from_preset(name)


def test_gpt2_124m_shape():
    model = CausalLM.from_preset("gpt2_124m")
    # GPT-2 small: 124,439,808 parameters with tied embeddings.
    assert model.count_params() == 124_439_808


def test_unknown_preset_lists_valid():
    with pytest.raises(ValueError, match="gpt_nano"):
        CausalLM.from_preset("gpt_huge")
    with pytest.raises(ValueError, match="num_layers"):
        CausalLM.from_preset("gpt_nano", num_layer=3)


@pytest.mark.parametrize("preset", FAMILIES)
def test_cached_equals_uncached_with_padding(preset):
    model = _model(preset)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 61, size=(2, 10))
    mask = np.ones((2, 16), "int32")
    mask[0, 7:] = 0
    full = np.asarray(model({"token_ids": ids, "padding_mask": mask[:, :10]}))
    cache = model.init_cache(2, 16)
    logits, cache = model.call_with_cache(ids[:, :6], cache, 0, padding_mask=mask)
    np.testing.assert_allclose(logits, full[:, :6], atol=1e-5)
    for t in range(6, 10):
        logits, cache = model.call_with_cache(ids[:, t : t + 1], cache, t, padding_mask=mask)
        real = mask[:, t].astype(bool)
        np.testing.assert_allclose(np.asarray(logits)[real, 0], full[real, t], atol=1e-5)


@pytest.mark.parametrize("preset", FAMILIES)
def test_position_ids_shift_under_left_padding(preset):
    """A left-padded prompt with shifted positions gives the unpadded prompt's logits."""
    model = _model(preset)
    ids = np.array([[5, 6, 7, 8]])
    padded = np.array([[0, 0, 5, 6, 7, 8]])
    mask = np.array([[0, 0, 1, 1, 1, 1]])
    positions = np.array([[0, 0, 0, 1, 2, 3]])
    plain = np.asarray(model(ids))
    shifted = np.asarray(
        model({"token_ids": padded, "padding_mask": mask, "position_ids": positions})
    )
    np.testing.assert_allclose(shifted[:, 2:], plain, atol=1e-5)


@pytest.mark.parametrize("preset", FAMILIES)
def test_fit_changes_every_weight(preset):
    model = _model(preset)
    ids = np.random.default_rng(0).integers(0, 61, size=(8, 17))
    before = [w.numpy().copy() for w in model.trainable_weights]
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    history = model.fit(ids[:, :-1], ids[:, 1:], batch_size=8, epochs=2, verbose=0)
    for w, old in zip(model.trainable_weights, before):
        assert not np.allclose(w.numpy(), old), w.path
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_tied_and_untied_heads():
    gpt, llama = _model("gpt_nano"), _model("llama_nano")
    assert gpt.tie_embeddings and not hasattr(gpt.token_embedding, "reverse_embeddings")
    assert not llama.tie_embeddings and llama.token_embedding.reverse_embeddings.shape == (64, 61)


@pytest.mark.parametrize("preset", FAMILIES)
def test_save_and_load_in_fresh_process(tmp_path, preset):
    model = _model(preset)
    model.compile()
    path = tmp_path / "model.keras"
    model.save(path)
    ids = np.random.default_rng(0).integers(0, 61, size=(2, 9))
    np.save(tmp_path / "ids.npy", ids)
    script = (
        "import numpy as np, keras, kzoo\n"
        f"m = keras.models.load_model({str(path)!r})\n"
        f"ids = np.load({str(tmp_path / 'ids.npy')!r})\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, keras.ops.convert_to_numpy(m(ids)))\n"
        "print(type(m).__name__, m.loss.__class__.__name__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={"KERAS_BACKEND": keras.backend.backend(),
                               "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CausalLM SparseCategoricalCrossentropy" in proc.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), np.asarray(model(ids)))


def test_config_json_roundtrip():
    model = _model("llama_nano", dropout=0.1)
    config = json.loads(json.dumps(model.get_config()))
    clone = CausalLM.from_config(config)
    assert clone.get_config() == model.get_config()
    assert clone.count_params() == model.count_params()
    assert keras.saving.get_registered_name(CausalLM) == "kzoo>CausalLM"


def test_mixed_bfloat16_forward_and_step():
    model = _model("llama_nano", dtype="mixed_bfloat16")
    ids = np.random.default_rng(0).integers(0, 61, size=(4, 9))
    logits = model(ids)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert model.token_embedding.embeddings.dtype == "float32"
    model.compile(optimizer="adamw")
    loss = model.fit(ids[:, :-1], ids[:, 1:], verbose=0).history["loss"][0]
    assert np.isfinite(loss)
    assert json.dumps(model.get_config())  # the policy serializes


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(hidden_dim=60, num_heads=8), "hidden_dim"),
        (dict(num_heads=4, num_kv_heads=3), "num_kv_heads"),
        (dict(position_embedding="alibi"), "position_embedding"),
        (dict(activation="tanh"), "activation"),
        (dict(vocab_size=0), "vocab_size"),
    ],
)
def test_bad_configuration(overrides, match):
    args = dict(get_preset("gpt_nano"), **overrides)
    with pytest.raises(ValueError, match=match):
        CausalLM(**args)


def test_bad_inputs():
    model = _model("gpt_nano")
    with pytest.raises(ValueError, match="max_sequence_length=24"):
        model(np.zeros((1, 25), "int32"))
    with pytest.raises(ValueError, match="integer"):
        model(np.zeros((1, 5), "float32"))
    with pytest.raises(ValueError, match=r"\(batch, seq\)"):
        model(np.zeros((5,), "int32"))
    with pytest.raises(ValueError, match="padding_mask"):
        model({"token_ids": np.zeros((1, 5), "int32"), "mask": np.ones((1, 5))})
    with pytest.raises(ValueError, match="max_sequence_length"):
        model.init_cache(1, 100)


def test_package_exports():
    assert kzoo.__version__
    assert kzoo.models.CausalLM is CausalLM
    assert kzoo.layers.TransformerBlock


@pytest.mark.parametrize("preset", ["gpt_nano", "llama_nano"])
def test_every_weight_starts_from_its_own_draw(preset):
    # One initializer object serves every block. Keras 3 fixes an unseeded initializer's seed
    # when the object is made, so reusing it gave all blocks the same starting weights (and
    # every matrix the same leading values): training started from copies of one layer.
    model = CausalLM.from_preset(preset, vocab_size=67, max_sequence_length=64)
    starts = {v.path: v.numpy().ravel()[:64] for v in model.weights if len(v.shape) == 2}
    paths = sorted(starts)
    for i, a in enumerate(paths):
        for b in paths[i + 1:]:
            assert not np.allclose(starts[a], starts[b]), f"{a} and {b} start the same"


def test_initial_weights_follow_the_global_seed():
    def weights():
        keras.utils.set_random_seed(7)
        model = CausalLM.from_preset("gpt_nano", vocab_size=67)
        return [v.numpy() for v in model.weights]

    for a, b in zip(weights(), weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_embed_is_the_residual_stream_entering_the_first_block():
    gpt = CausalLM.from_preset("gpt_nano", vocab_size=20, max_sequence_length=16)
    ids = np.array([[1, 2, 3]])
    tokens = np.asarray(gpt.token_embedding(ids))
    positions = np.asarray(gpt.position_embedding_layer.embeddings)
    np.testing.assert_allclose(gpt.embed(ids), tokens + positions[None, :3], atol=1e-6)
    np.testing.assert_allclose(gpt.embed(ids, cache_index=4), tokens + positions[None, 4:7],
                               atol=1e-6)
    np.testing.assert_allclose(gpt.embed(ids, position_ids=np.array([[0, 0, 5]])),
                               tokens + positions[None, [0, 0, 5]], atol=1e-6)
    llama = CausalLM.from_preset("llama_nano", vocab_size=20, max_sequence_length=16)
    # RoPE models add positions inside attention: the stream is the token embeddings.
    np.testing.assert_allclose(llama.embed(ids, cache_index=4), llama.token_embedding(ids))
