"""The GRPO / RLOO train step is written once against `kzoo.backend`: one step on JAX (jitted,
stateless under `backend.stateful_step`) and on PyTorch (child processes with KERAS_BACKEND=jax
or torch) gives the loss, the metrics and the updated weights that TensorFlow gives from the same
weights and batch (float32, to 1e-5); so does a `test_on_batch` after it."""

import numpy as np
import pytest

from tests.helpers import (
    assert_logs_close,
    assert_weights_close,
    installed,
    run_script_here,
    start_backend_children,
)

BACKENDS = ("jax", "torch")
ALGORITHMS = ("grpo", "rloo")

STEP = r'''
import json, sys
import numpy as np
import keras
from kzoo.alignment.online import PolicyGradientModel
from kzoo.models import CausalLM

weights, folder, batch = sys.argv[1], sys.argv[2], dict(np.load(sys.argv[3]))
results = {}
for algorithm in sys.argv[4].split(","):  # one process, every algorithm: imports dominate
    model = CausalLM(vocab_size=12, num_layers=1, num_heads=2, hidden_dim=16,
                     intermediate_dim=32, max_sequence_length=16, dropout=0.0)
    model(np.zeros((1, 4), "int32"))
    model.load_weights(weights)
    trainer = PolicyGradientModel(model, algorithm=algorithm, beta=0.1, epsilon=0.2,
                                  prompt_kl_coef=0.5)
    trainer.compile(optimizer=keras.optimizers.SGD(0.5))
    logs = trainer.train_on_batch(batch, return_dict=True)
    test = trainer.test_on_batch(batch, return_dict=True)
    np.savez(f"{folder}/{keras.backend.backend()}_{algorithm}.npz",
             *[np.asarray(w) for w in model.get_weights()])
    results[algorithm] = {"logs": {k: float(v) for k, v in logs.items()},
                          "test": {k: float(v) for k, v in test.items()}}
print(json.dumps({"backend": keras.backend.backend(), "results": results}))
'''


def _batch(path):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 12, (4, 8)).astype("int32")
    completion = np.zeros((4, 8), "float32")
    completion[:, 4:] = 1.0
    prompt = 1.0 - completion
    np.savez(path, token_ids=ids, completion_mask=completion, prompt_mask=prompt,
             advantages=np.array([1.0, -1.0, 0.5, -0.5], "float32"),
             old_logps=rng.normal(-2.3, 0.4, (4, 7)).astype("float32"),
             ref_logps=rng.normal(-2.3, 0.4, (4, 7)).astype("float32"))


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    """(folder, initial weights, {backend: CompletedChild}): one child per backend steps every
    algorithm; TensorFlow's reference runs the same script in this process meanwhile."""
    import keras

    from kzoo.models import CausalLM

    folder = tmp_path_factory.mktemp("train_step_backends")
    keras.utils.set_random_seed(0)
    model = CausalLM(vocab_size=12, num_layers=1, num_heads=2, hidden_dim=16,
                     intermediate_dim=32, max_sequence_length=16, dropout=0.0)
    model(np.zeros((1, 4), "int32"))
    model.save_weights(folder / "w.weights.h5")
    _batch(folder / "batch.npz")
    args = [folder / "w.weights.h5", folder, folder / "batch.npz", ",".join(ALGORITHMS)]
    with start_backend_children(["-c", STEP, *args], installed(BACKENDS)) as kids:
        children = {"tensorflow": run_script_here(STEP, args), **kids.wait()}
    return folder, model.get_weights(), children


def _step(steps, backend, algorithm):
    """(logs with the test_on_batch ones as `test/...`, updated weights)."""
    folder, _, children = steps
    result = children[backend].json()
    assert result["backend"] == backend
    logs, test = result["results"][algorithm]["logs"], result["results"][algorithm]["test"]
    weights = np.load(folder / f"{backend}_{algorithm}.npz")
    return {**logs, **{f"test/{k}": v for k, v in test.items()}}, [
        weights[k] for k in weights.files]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_one_step_equals_tensorflow(backend, algorithm, steps):
    pytest.importorskip(backend)
    initial = steps[1]
    tf_logs, tf_weights = _step(steps, "tensorflow", algorithm)
    logs, weights = _step(steps, backend, algorithm)
    assert_logs_close(logs, tf_logs, where=algorithm)
    assert tf_logs["kl/prompt"] > 0 and tf_logs["loss"] != 0
    assert tf_logs["test/loss"] != tf_logs["loss"]  # evaluated after the step, on new weights
    assert_weights_close(weights, tf_weights, initial, moved_more_than=1e-4)  # the step moved
