"""What each backend computes for tests/backends/test_cross_backend.py.

`compute` runs every check on the current Keras backend and returns the results by name; the
test runs it on TensorFlow in its own process and, in one child process per other backend,
`KERAS_BACKEND=jax python -m tests.backends.cross_backend_checks WORKDIR OUT.npz`.
Weights come from numpy (`set_fixed_weights`) or from files, never from a backend's RNG, so every
backend computes on bit-identical inputs.
"""

import os
import sys
import warnings
from pathlib import Path

if __name__ == "__main__" and os.environ.get("KERAS_BACKEND") != "tensorflow":
    # A JAX or PyTorch machine often has no TensorFlow: every check runs as if it were not
    # installed (an import fails, `importlib.util.find_spec` says None).
    sys.modules["tensorflow"] = None

import numpy as np

# one nano preset per kind of block: GPT-2, Llama, Gemma 3 (q/k norms, local/global layers,
# (1 + w) and post norms, scaled embeddings). Qwen3 is Llama's block with Gemma's q/k norms,
# so it adds no computation of its own here (and each family adds about a minute of traces).
FAMILIES = {"gpt": "gpt_nano", "llama": "llama_nano", "gemma3": "gemma3_nano"}
VOCAB, SEQ = 96, 12


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def token_ids() -> np.ndarray:
    """Fixed ids (2, SEQ), the same in every process."""
    return _rng(0).integers(1, VOCAB, size=(2, SEQ)).astype("int32")


def left_padded() -> dict:
    """Row 0 left-padded by 3 (padding_mask 0, id 0), row 1 full: a batch as generation makes."""
    ids = token_ids()
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

    ids, padded = token_ids(), left_padded()
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

    padded = left_padded()
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
        out[f"{family}_cache_keys"] = _np(cache[0][0])  # (batch, kv_heads, 14, head_dim)

        lora = CausalLM.from_preset(preset, vocab_size=VOCAB, dropout=0.0)
        lora.enable_lora(2, alpha=4.0, targets="all")
        set_fixed_weights(lora, seed=200 + i)
        out[f"{family}_lora"] = _predict(lora, token_ids())
        out[f"{family}_lora_merged"] = _predict(lora.merged_copy(), token_ids())
        # Adapters saved on TensorFlow (safetensors) onto the TensorFlow base weights.
        adapted = CausalLM.from_preset(preset, vocab_size=VOCAB, dropout=0.0)
        adapted.load_weights(workdir / f"{family}.weights.h5")
        adapted.load_lora(workdir / f"{family}.lora.safetensors")
        out[f"{family}_lora_file"] = _predict(adapted, token_ids())

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
    prompt[:, :4] = token_ids()[:, :4]
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
        out[f"own_{family}"] = _predict(model, token_ids())
        model.save(workdir / f"{backend}_{family}.keras")
        model.enable_lora(2, targets="attention")
        set_fixed_weights(model, seed=110 + i)
        out[f"own_{family}_lora"] = _predict(model, token_ids())
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
    from tests.backends.generation_checks import generation_checks

    keras.utils.set_random_seed(0)
    out: dict[str, np.ndarray] = {}
    _model_checks(workdir, out)
    _model_feature_checks(workdir, out)
    _sampler_layer_checks(workdir, out)
    _save_own_models(workdir, out)
    _layer_checks(out)
    _sampler_checks(out)
    _loss_checks(out)
    generation_checks(workdir, out)
    return out


if __name__ == "__main__":
    np.savez(sys.argv[2], **compute(Path(sys.argv[1])))
