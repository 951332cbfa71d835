"""The same weights give the same numbers on TensorFlow, JAX and PyTorch.

The parent (this pytest process) runs on TensorFlow. For each other backend one child Python
process (`KERAS_BACKEND=jax` / `torch`) runs `compute` - the very function the parent runs -
and writes every result into one .npz; the parent compares them with its own. Checked:
CausalLM logits of the gpt and llama families from a `.keras` file and a `.weights.h5` saved on
TensorFlow (float32 and int8-quantized, padded batches, KV-cached calls, LoRA and LoRA files),
`.keras` files saved on jax/torch reloaded on TensorFlow, attention (einsum and fused, RoPE,
padding mask, KV cache), transformer blocks, a LoRA-enabled `Projection`, the sampler layers and
pure sampler functions, and the DPO / reward / KTO / policy-gradient losses.

Tolerance: float32 everywhere, `rtol = atol = 1e-5` (the issue's bar; differences come only
from the order of float additions in each backend's kernels).

Run as a child: `KERAS_BACKEND=jax python tests/backends/test_cross_backend.py WORKDIR OUT.npz`.
"""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

BACKENDS = ("jax", "torch")
RTOL = ATOL = 1e-5  # float32
FAMILIES = {"gpt": "gpt_nano", "llama": "llama_nano"}
VOCAB, SEQ = 96, 12
CHILD_TIMEOUT_S = 300
_REPO = Path(__file__).resolve().parents[2]


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _token_ids() -> np.ndarray:
    """Fixed ids (2, SEQ), the same in every process."""
    return _rng(0).integers(1, VOCAB, size=(2, SEQ)).astype("int32")


def _left_padded() -> dict:
    """Row 0 left-padded by 3 (padding_mask 0, id 0), row 1 full: a batch as generation makes."""
    ids = _token_ids()
    mask = np.ones_like(ids)
    ids[0, :3], mask[0, :3] = 0, 0
    return {"token_ids": ids, "padding_mask": mask}


def set_fixed_weights(layer, seed: int, scale: float = 0.05) -> None:
    """Give every weight of `layer` (built) a fixed random value from numpy, so each backend
    gets bit-identical weights whatever its own initializers draw. Weights that start at one
    (norm scales) become 1 + noise; biases, norm offsets and LoRA's zero-initialised B get
    noise too, so they take part in the comparison."""
    rng = _rng(seed)
    layer.set_weights([
        (np.all(w == 1.0) + rng.normal(0.0, scale, w.shape)).astype(w.dtype)
        for w in layer.get_weights()
    ])


def _np(x) -> np.ndarray:
    from keras import ops

    return np.asarray(ops.convert_to_numpy(x))


def _predict(model, inputs) -> np.ndarray:
    """Logits through Keras' compiled predict step (`jax.jit` / `tf.function`; eager on torch),
    the path `fit` and `predict` take; the KV-cached calls below run eagerly (JAX compiles
    each eager op apart, so compiled calls keep the JAX child within its time)."""
    return _np(model.predict_on_batch(inputs))


def _model_checks(workdir: Path, out: dict) -> None:
    import keras

    from kzoo.models import CausalLM

    ids, padded = _token_ids(), _left_padded()
    for family, preset in FAMILIES.items():
        loaded = keras.saving.load_model(workdir / f"{family}.keras")
        out[f"{family}_keras"] = _predict(loaded, ids)
        out[f"{family}_keras_padded"] = _predict(loaded, padded)
        rebuilt = CausalLM.from_preset(preset, vocab_size=VOCAB, dropout=0.0)
        rebuilt.load_weights(workdir / f"{family}.weights.h5")
        out[f"{family}_h5"] = _predict(rebuilt, ids)
        with warnings.catch_warnings():  # "the norms have no `quantize`": they stay float
            warnings.simplefilter("ignore", UserWarning)
            loaded.quantize("int8")
        out[f"{family}_int8"] = _predict(loaded, ids)


def _model_feature_checks(workdir: Path, out: dict) -> None:
    """Eager KV-cached calls, LoRA (and its merge, and a LoRA file) and the eager vocabulary
    check."""
    import keras
    from keras import ops

    from kzoo.models import CausalLM

    padded = _left_padded()
    for i, (family, preset) in enumerate(FAMILIES.items()):
        model = keras.saving.load_model(workdir / f"{family}.keras")
        # Prefill 8 left-padded tokens into 14 slots, then decode two; the padding mask covers
        # every cache slot (batch, 14), later slots counted as real.
        mask = np.ones((2, 14), "int32")
        mask[:, :SEQ] = padded["padding_mask"]
        cache = model.init_cache(batch_size=2, max_length=14)
        prefill, cache = model.call_with_cache(padded["token_ids"][:, :8], cache, 0,
                                               padding_mask=mask)
        step, cache = model.call_with_cache(padded["token_ids"][:, 8:9], cache, 8,
                                            padding_mask=mask)
        step2, cache = model.call_with_cache(padded["token_ids"][:, 9:10], cache,
                                             ops.convert_to_tensor(9, "int32"),
                                             padding_mask=mask)
        out[f"{family}_cache_prefill"], out[f"{family}_cache_step"] = _np(prefill), _np(step)
        out[f"{family}_cache_step2"] = _np(step2)

        lora = CausalLM.from_preset(preset, vocab_size=VOCAB, dropout=0.0)
        lora.enable_lora(2, alpha=4.0, targets="all")
        set_fixed_weights(lora, seed=200 + i)
        out[f"{family}_lora"] = _predict(lora, _token_ids())
        out[f"{family}_lora_merged"] = _predict(lora.merged_copy(), _token_ids())
        # Adapters saved on TensorFlow (safetensors) onto the TensorFlow base weights.
        adapted = CausalLM.from_preset(preset, vocab_size=VOCAB, dropout=0.0)
        adapted.load_weights(workdir / f"{family}.weights.h5")
        adapted.load_lora(workdir / f"{family}.lora.safetensors")
        out[f"{family}_lora_file"] = _predict(adapted, _token_ids())

        try:
            model(np.full((1, 3), VOCAB + 5, "int32"))
            out[f"{family}_rejects_oov"] = np.array(0)
        except ValueError:
            out[f"{family}_rejects_oov"] = np.array(1)


def _sampler_layer_checks(workdir: Path, out: dict) -> None:
    """The sampler layers' logits processing and their keras_hub decode loop."""
    import keras
    from keras import ops

    from kzoo import samplers

    rng = _rng(7)
    logits = rng.normal(0.0, 2.0, size=(3, 50)).astype("float32")  # (batch, vocab)
    counts = rng.integers(0, 3, size=(3, 50)).astype("float32")
    sampler = samplers.Sampler(temperature=0.8, top_k=12, top_p=0.9, min_p=0.02,
                               repetition_penalty=1.2, frequency_penalty=0.1,
                               presence_penalty=0.2)
    out["sl_probabilities"] = _np(sampler.compute_probabilities(logits, counts))
    out["sl_greedy"] = _np(samplers.get("greedy")(logits))
    out["sl_beam_logprobs"] = _np(samplers.BeamSampler(num_beams=3).log_probabilities(logits))
    out["sl_beam_top"] = _np(samplers.BeamSampler(num_beams=3)(logits))

    model = keras.saving.load_model(workdir / "gpt.keras")

    def next(prompt, cache, index):  # keras_hub protocol: the logits (batch, vocab) at index
        logits = model(prompt)  # (batch, max_length, vocab)
        last = ops.take(logits, index - 1, axis=1)
        return last, None, cache

    prompt = np.zeros((2, 10), "int32")
    prompt[:, :4] = _token_ids()[:, :4]
    mask = np.zeros((2, 10), bool)
    mask[:, :4] = True
    for name, kwargs in {"greedy": {}, "penalised": dict(repetition_penalty=1.5)}.items():
        decoder = samplers.GreedySampler(**kwargs)
        out[f"sl_decode_{name}"] = _np(decoder(next, prompt, index=4, mask=mask))


def _save_own_models(workdir: Path, out: dict) -> None:
    """Models made on this backend, saved as `.keras` for another backend to reload."""
    import keras

    from kzoo.models import CausalLM

    backend = keras.backend.backend()
    for i, (family, preset) in enumerate(FAMILIES.items()):
        model = CausalLM.from_preset(preset, vocab_size=VOCAB, dropout=0.0)
        set_fixed_weights(model, seed=100 + i)
        out[f"own_{family}"] = _predict(model, _token_ids())
        model.save(workdir / f"{backend}_{family}.keras")
        model.enable_lora(2, targets="attention")
        set_fixed_weights(model, seed=110 + i)
        out[f"own_{family}_lora"] = _predict(model, _token_ids())
        model.save(workdir / f"{backend}_{family}_lora.keras")


def _layer_checks(out: dict) -> None:
    import keras

    from kzoo.layers import CausalSelfAttention, TransformerBlock
    from kzoo.layers.projection import Projection

    rng = _rng(1)
    x = rng.normal(size=(2, 7, 32)).astype("float32")  # (batch, seq, hidden)
    mask = np.ones((2, 7), "int32")
    mask[0, :2] = 0  # left padding
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype("int32")
    for impl in ("einsum", "fused"):
        attn = CausalSelfAttention(32, 4, num_kv_heads=2, use_rope=True, attention_impl=impl)
        attn.build((None, None, 32))
        set_fixed_weights(attn, seed=2, scale=0.2)
        out[f"attn_{impl}_rope"] = _np(attn(x))
        out[f"attn_{impl}_mask"] = _np(attn(x, padding_mask=mask, position_ids=positions))
        plain = CausalSelfAttention(32, 4, attention_impl=impl)
        plain.build((None, None, 32))
        set_fixed_weights(plain, seed=3, scale=0.2)
        out[f"attn_{impl}_plain_mask"] = _np(plain(x, padding_mask=mask))
    # KV cache: prefill 5 tokens into 9 slots, then decode one; cache (batch, kv, slots, head).
    attn = CausalSelfAttention(32, 4, num_kv_heads=2, use_rope=True)
    attn.build((None, None, 32))
    set_fixed_weights(attn, seed=4, scale=0.2)
    cache = (np.zeros((2, 2, 9, 8), "float32"),) * 2
    prefill, cache = attn(x[:, :5], cache=cache, cache_index=0)
    step, cache = attn(x[:, 5:6], cache=cache, cache_index=5)
    out["attn_cache_prefill"], out["attn_cache_step"] = _np(prefill), _np(step)
    out["attn_cache_keys"] = _np(cache[0])

    styles = {
        "gpt": dict(activation="gelu", norm="layernorm", use_bias=True),
        "llama": dict(activation="swiglu", norm="rmsnorm", use_bias=False, use_rope=True,
                      num_kv_heads=2),
    }
    for i, (style, kwargs) in enumerate(styles.items()):
        block = TransformerBlock(hidden_dim=32, num_heads=4, intermediate_dim=48, **kwargs)
        block.build((None, None, 32))
        set_fixed_weights(block, seed=10 + i, scale=0.2)
        out[f"block_{style}"] = _np(block(x))
        out[f"block_{style}_mask"] = _np(block(x, padding_mask=mask))

    lora = Projection(6)
    lora.build((None, 5))
    lora.enable_lora(2, lora_alpha=4.0)
    set_fixed_weights(lora, seed=20, scale=0.3)
    out["lora_projection"] = _np(lora(rng.normal(size=(3, 5)).astype("float32")))
    keras.utils.clear_session()


def _sampler_checks(out: dict) -> None:
    from kzoo.samplers import functional as F

    rng = _rng(5)
    logits = rng.normal(0.0, 2.0, size=(3, 50)).astype("float32")  # (batch, vocab), no ties
    ids = rng.integers(0, 50, size=(3, 8)).astype("int32")
    seen = np.ones((3, 8), "int32")
    seen[:, :2] = 0
    counts = F.token_counts(ids, 50, mask=seen)
    out["s_token_counts"] = _np(counts)
    out["s_temperature"] = _np(F.scale_temperature(logits, 0.7))
    out["s_top_k"] = _np(F.top_k_filter(logits, 5))
    out["s_top_p"] = _np(F.top_p_filter(logits, 0.8))
    out["s_min_p"] = _np(F.min_p_filter(logits, 0.1))
    out["s_repetition"] = _np(F.repetition_penalty(logits, counts, 1.3))
    out["s_frequency"] = _np(F.frequency_penalty(logits, counts, 0.5))
    out["s_presence"] = _np(F.presence_penalty(logits, counts, 0.5))
    out["s_greedy"] = _np(F.greedy_draw(logits))
    chained = F.min_p_filter(F.top_p_filter(F.top_k_filter(
        F.scale_temperature(F.repetition_penalty(logits, counts, 1.2), 0.9), 20), 0.9), 0.05)
    out["s_chained"] = _np(chained)


def _loss_checks(out: dict) -> None:
    from kzoo import losses
    from kzoo.losses import policy_gradient as pg

    rng = _rng(6)
    chosen, rejected = rng.normal(size=(2, 8)).astype("float32")  # (batch,) log-ratios
    for name in losses.list_losses():
        out[f"l_pref_{name}"] = _np(losses.get(name)(chosen, rejected, beta=0.3))
    out["l_bradley_terry"] = _np(losses.BradleyTerryLoss()(np.zeros(8, "float32"),
                                                           np.stack([chosen, rejected], -1)))
    out["l_pairwise_accuracy"] = _np(losses.pairwise_accuracy(
        np.zeros(8, "float32"), np.stack([chosen, rejected], -1)))

    logratios = rng.normal(size=8).astype("float32")
    labels = np.array([1, 0, 1, 1, 0, 0, 1, 0], bool)
    policy_kl, reference_kl = rng.normal(-3.0, 1.0, size=(2, 8)).astype("float32")
    kl = losses.kto_kl(policy_kl + 0.5, reference_kl)
    out["l_kto_kl"] = _np(kl)
    for name in losses.list_unpaired_losses():
        out[f"l_unpaired_{name}"] = _np(losses.kto_loss(
            logratios, labels, kl, beta=0.2, desirable_weight=1.3, undesirable_weight=0.7,
            loss_type=name))

    logps, ref_logps = rng.normal(-2.0, 0.5, size=(2, 4, 6)).astype("float32")  # (rows, T)
    advantages = rng.normal(size=(4, 1)).astype("float32")
    token_mask = (rng.random((4, 6)) > 0.3).astype("float32")
    out["l_k3_kl"] = _np(pg.k3_kl(logps, ref_logps))
    surrogate, ratio = pg.clipped_surrogate(logps - ref_logps, advantages, 0.2, 0.28)
    out["l_surrogate"], out["l_ratio"] = _np(surrogate), _np(ratio)
    low, high = pg.clip_flags(ratio, advantages, 0.2, 0.28)
    out["l_clip_low"], out["l_clip_high"] = _np(low), _np(high)
    for loss_type in pg.LOSS_TYPES:
        out[f"l_reduce_{loss_type}"] = _np(pg.reduce_token_loss(
            surrogate, token_mask, loss_type, num_items=np.float32(30.0),
            max_completion_length=6))


def compute(workdir: Path) -> dict[str, np.ndarray]:
    """Every cross-backend check on the current Keras backend.

    Args:
        workdir: Path. holds gpt/llama `.keras` and `.weights.h5` saved on TensorFlow; this
            backend's own `.keras` files are written there too.

    Returns: dict of result name -> numpy array.

    Example:
    ```python
    results = compute(Path("/tmp/xb"))   # {"gpt_keras": (2, 12, 96) logits, ...}
    ```
    """
    import keras

    import kzoo  # noqa: F401  (registers the layers for load_model)

    keras.utils.set_random_seed(0)
    out: dict[str, np.ndarray] = {}
    _model_checks(workdir, out)
    _model_feature_checks(workdir, out)
    _sampler_layer_checks(workdir, out)
    _save_own_models(workdir, out)
    _layer_checks(out)
    _sampler_checks(out)
    _loss_checks(out)
    return out


# ----------------------------------------------------------------------------- parent side
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """TensorFlow's results, and each child backend's results or its stderr on failure."""
    import keras

    from kzoo.models import CausalLM

    assert keras.backend.backend() == "tensorflow", "the parent must run on TensorFlow"
    workdir = tmp_path_factory.mktemp("cross_backend")
    keras.utils.set_random_seed(0)
    for i, (family, preset) in enumerate(FAMILIES.items()):
        model = CausalLM.from_preset(preset, vocab_size=VOCAB, dropout=0.0)
        set_fixed_weights(model, seed=i)
        model.save(workdir / f"{family}.keras")
        model.save_weights(workdir / f"{family}.weights.h5")
        model.enable_lora(2, alpha=4.0, targets="all")
        set_fixed_weights(model, seed=50 + i)
        model.save_lora(workdir / f"{family}.lora.safetensors")

    children = {}
    for backend in BACKENDS:
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
               "PYTHONPATH": os.pathsep.join([str(_REPO), os.environ.get("PYTHONPATH", "")])}
        # Both children at once: each is mostly import time.
        children[backend] = subprocess.Popen(
            [sys.executable, __file__, str(workdir), str(workdir / f"{backend}.npz")],
            env=env, cwd=_REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reference = compute(workdir)
    results = {}
    for backend, child in children.items():
        try:
            _, stderr = child.communicate(timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            stderr = f"timed out after {CHILD_TIMEOUT_S} s"
        if child.returncode == 0:
            with np.load(workdir / f"{backend}.npz") as data:
                results[backend] = dict(data)
        else:
            results[backend] = stderr[-4000:]
    return {"workdir": workdir, "tensorflow": reference, **results}


def _child(runs, backend) -> dict:
    result = runs[backend]
    if isinstance(result, str):
        pytest.fail(f"the KERAS_BACKEND={backend} child failed:\n{result}")
    return result


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_results_as_tensorflow(runs, backend):
    child, reference = _child(runs, backend), runs["tensorflow"]
    skipped = {k for k in reference if k.startswith("own_")}
    assert set(child) == set(reference), set(child) ^ set(reference)
    mismatched = []
    for key in sorted(set(reference) - skipped):
        assert child[key].shape == reference[key].shape, key
        assert np.all(np.isfinite(reference[key])), key
        if not np.allclose(child[key], reference[key], rtol=RTOL, atol=ATOL):
            diff = float(np.max(np.abs(child[key].astype("float64") - reference[key])))
            mismatched.append(f"{key}: max |diff| {diff:.3g}")
    assert not mismatched, f"{backend} differs from tensorflow: {mismatched}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_changes_logits(runs, backend):
    # Guards the padded comparison against a mask that is silently ignored everywhere.
    child = _child(runs, backend)
    for family in FAMILIES:
        real = slice(3, None)  # row 0's real tokens
        assert not np.allclose(child[f"{family}_keras_padded"][0, real],
                               child[f"{family}_keras"][0, real], atol=1e-3)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_file_saved_on_backend_loads_on_tensorflow(runs, backend, family):
    import keras

    from kzoo.models.lora import adapter_layers

    child = _child(runs, backend)
    workdir = runs["workdir"]
    loaded = keras.saving.load_model(workdir / f"{backend}_{family}.keras")
    logits = np.asarray(loaded(_token_ids()))
    np.testing.assert_allclose(logits, child[f"own_{family}"], rtol=RTOL, atol=ATOL)
    # The child's model has its own weights, not the TensorFlow-made ones.
    assert not np.allclose(logits, runs["tensorflow"][f"{family}_keras"], atol=1e-3)
    adapted = keras.saving.load_model(workdir / f"{backend}_{family}_lora.keras")
    # `save` merges the adapters into the kernels (kzoo.models.lora), on every backend.
    assert not adapter_layers(adapted)
    np.testing.assert_allclose(np.asarray(adapted(_token_ids())), child[f"own_{family}_lora"],
                               rtol=RTOL, atol=ATOL)


if __name__ == "__main__":
    np.savez(sys.argv[2], **compute(Path(sys.argv[1])))
