"""The same weights give the same numbers on TensorFlow, JAX and PyTorch.

The parent (this pytest process) runs on TensorFlow. For each other backend one child Python
process (`KERAS_BACKEND=jax` / `torch`) runs `compute` - the very function the parent runs -
and writes every result into one .npz; the parent compares them with its own. Checked:
CausalLM logits of the gpt and llama families from a `.keras` file and a `.weights.h5` saved on
TensorFlow (float32 and int8-quantized, padded batches, KV-cached calls, LoRA and LoRA files),
`.keras` files saved on jax/torch reloaded on TensorFlow, attention (einsum and fused, RoPE,
padding mask), transformer blocks, a LoRA-enabled `Projection`, the sampler layers and
pure sampler functions, and the DPO / reward / KTO / policy-gradient losses.

Tolerance: float32 everywhere, `rtol = atol = 1e-5` (the issue's bar; differences come only
from the order of float additions in each backend's kernels).

The checks themselves are in `cross_backend_checks.py`.
"""

import numpy as np
import pytest

from tests.backends.cross_backend_checks import (
    FAMILIES,
    VOCAB,
    compute,
    set_fixed_weights,
    token_ids,
)
from tests.helpers import start_backend_children

BACKENDS = ("jax", "torch")
RTOL = ATOL = 1e-5  # float32


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

    # Both children at once, while the parent computes: each is mostly import time.
    with start_backend_children(lambda backend: [
            "-m", "tests.backends.cross_backend_checks", workdir, workdir / f"{backend}.npz"],
            BACKENDS) as children:
        reference = compute(workdir)
        results = {}
        for backend, child in children.wait().items():
            if child.ok:
                with np.load(workdir / f"{backend}.npz") as data:
                    results[backend] = dict(data)
            else:
                results[backend] = child.failure()
    return {"workdir": workdir, "tensorflow": reference, **results}


def _child(runs, backend) -> dict:
    result = runs[backend]
    if isinstance(result, str):
        pytest.fail(result, pytrace=False)
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
def test_checks_can_tell(runs, backend):
    # Guards comparisons that would also agree if a feature were silently off everywhere: the
    # padding mask, LoRA adapters, the eager vocabulary check.
    child, reference = _child(runs, backend), runs["tensorflow"]
    for family in FAMILIES:
        assert reference[f"{family}_rejects_oov"] == 1
        assert not np.allclose(reference[f"{family}_lora_file"], reference[f"{family}_h5"],
                               atol=1e-3)
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
    logits = np.asarray(loaded(token_ids()))
    np.testing.assert_allclose(logits, child[f"own_{family}"], rtol=RTOL, atol=ATOL)
    # The child's model has its own weights, not the TensorFlow-made ones.
    assert not np.allclose(logits, runs["tensorflow"][f"{family}_keras"], atol=1e-3)
    adapted = keras.saving.load_model(workdir / f"{backend}_{family}_lora.keras")
    # `save` merges the adapters into the kernels (kzoo.models.lora), on every backend.
    assert not adapter_layers(adapted)
    np.testing.assert_allclose(np.asarray(adapted(token_ids())), child[f"own_{family}_lora"],
                               rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("backend", ("tensorflow", *BACKENDS))
def test_generation_within_one_backend(runs, backend):
    # Sampling draws from each backend's own generator, so these hold within a backend:
    # same seed -> same tokens, stream == generate, one compiled program per shape bucket
    # (traces counted by the Generator; on PyTorch, programs made).
    result = runs["tensorflow"] if backend == "tensorflow" else _child(runs, backend)
    names = ["same seed", "other seed", "other prompts", "sampler traces", "stream", "traces"]
    for family in FAMILIES:
        flags = result[f"own_gen_{family}_flags"]
        failed = [n for n, ok in zip(names, flags) if not ok]
        assert not failed, f"{backend} {family}: {failed}"
        # The checks can tell: the stop token ends row 0 early, new weights change the tokens.
        assert result[f"gen_{family}_stop_reasons"][0] == 1
        assert not np.array_equal(result[f"gen_{family}_after_update"],
                                  result[f"gen_{family}_greedy"])
