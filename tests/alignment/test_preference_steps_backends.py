"""DPO (sigmoid, and RPO with rpo_alpha > 0), KTO and the reward model train the same on every
backend: one `train_on_batch` (and a `test_on_batch` after it) in a child process with
KERAS_BACKEND=jax or torch gives the loss, the metrics and the updated weights that TensorFlow
gives from the same weights and batch (float32, SGD, to 1e-5); a 2-step `DPOModel.fit` runs
through each backend's own Keras trainer (jitted on JAX) and gives TensorFlow's history.

Each backend runs every case in one child process (imports dominate the time; the JAX one also
runs the dropout check), both started at once, once for the module; TensorFlow's reference runs
the same script in the pytest process meanwhile."""

import json

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
CONFIG = dict(vocab_size=12, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32,
              max_sequence_length=16, dropout=0.0)
CASES = ("dpo", "rpo", "kto", "reward", "dpo_fit", "dpo_precomputed", "kto_precomputed")

CHILD = r'''
import json, sys
import numpy as np
import keras
from kzoo.alignment.dpo import DPOModel, compute_reference_logps, frozen_copy
from kzoo.alignment.kto import KTOModel, compute_unpaired_reference_logps, implied_reward_accuracy
from kzoo.alignment.reward import RewardModel
from kzoo.models import CausalLM

folder, config = sys.argv[1], json.loads(sys.argv[2])
data = dict(np.load(f"{folder}/batch.npz"))


def causal_lm(weights):
    model = CausalLM(**config)
    model(np.zeros((1, 4), "int32"))
    model.load_weights(f"{folder}/{weights}.weights.h5")
    return model


def floats(logs):
    return {k: float(v) for k, v in logs.items()}


def run(case):
    if case == "reward":
        model = RewardModel(causal_lm("policy"))
        model.load_weights(f"{folder}/reward.weights.h5")
        model.compile(optimizer=keras.optimizers.SGD(0.5))
        x = {"token_ids": data["pair_ids"], "lengths": data["lengths"]}
        y = np.zeros(len(data["pair_ids"]), "float32")
        train = model.train_on_batch(x, y, return_dict=True)
        test = model.test_on_batch(x, y, return_dict=True)
        return {"train": floats(train), "test": floats(test)}, model.get_weights()
    policy, reference = causal_lm("policy"), causal_lm("reference")
    extra = {}
    if case.startswith("kto"):
        x = {k: data[k] for k in ("token_ids", "loss_mask", "labels", "kl_token_ids",
                                  "kl_loss_mask")}
        if case == "kto_precomputed":  # the reference's log-probs from a compiled function
            x.update(compute_unpaired_reference_logps(reference, x, batch_size=3))
            reference = None
        model = KTOModel(policy, reference, beta=0.5, undesirable_weight=1.5)
    else:
        x = {"token_ids": data["pair_ids"], "loss_mask": data["pair_mask"]}
        if case == "dpo_precomputed":
            x["reference_logps"] = compute_reference_logps(reference, x, batch_size=3)
            extra["implied"] = implied_reward_accuracy(policy, None, x, beta=0.5, batch_size=3)
            reference = None
        model = DPOModel(policy, reference, beta=0.5, rpo_alpha=1.0 if case == "rpo" else 0.0)
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    if case == "dpo_fit":
        history = model.fit(x, batch_size=2, epochs=1, shuffle=False, verbose=0).history
        assert model.jit_compile or keras.backend.backend() != "jax"  # the jitted trainer
        return {"train": {k: v[-1] for k, v in history.items()}}, policy.get_weights()
    train = model.train_on_batch(x, return_dict=True)
    test = model.test_on_batch(x, return_dict=True)
    return {"train": floats(train), "test": floats(test), **extra}, policy.get_weights()


def dropout():
    """Two SGD(0) steps of a DPOModel whose policy has dropout 0.3: only the masks differ."""
    policy = CausalLM(**{**config, "dropout": 0.3})
    policy(np.zeros((1, 4), "int32"))
    mask = np.zeros((4, 2, 8), "float32")
    mask[:, :, 3:] = 1.0
    x = {"token_ids": np.random.default_rng(0).integers(0, 12, (4, 2, 8)).astype("int32"),
         "loss_mask": mask}
    model = DPOModel(policy, frozen_copy(policy), beta=0.5)
    model.compile(optimizer=keras.optimizers.SGD(0.0))  # the weights stay: only dropout differs
    seeds = [v for v in policy.non_trainable_variables if "seed_generator" in v.path]
    before = [np.asarray(v.value).copy() for v in seeds]
    losses = [float(model.train_on_batch(x, return_dict=True)["loss"]) for _ in range(2)]
    moved = any((np.asarray(v.value) != b).any() for v, b in zip(seeds, before))
    return {"losses": losses, "seeds": len(seeds), "moved": bool(moved)}


out = {"backend": keras.backend.backend()}
for case in sys.argv[3].split(","):
    if case == "dropout":
        out[case] = dropout()
        continue
    out[case], weights = run(case)
    np.savez(f"{folder}/{keras.backend.backend()}_{case}.npz", *[np.asarray(w) for w in weights])
print(json.dumps(out))
'''


def _write_inputs(folder):
    import keras

    from kzoo.alignment.reward import RewardModel
    from kzoo.models import CausalLM

    keras.utils.set_random_seed(0)
    for name in ("policy", "reference"):
        model = CausalLM(**CONFIG)
        model(np.zeros((1, 4), "int32"))
        model.save_weights(folder / f"{name}.weights.h5")
        if name == "policy":
            initial = model.get_weights()
            reward = RewardModel(model)
            reward.save_weights(folder / "reward.weights.h5")
            initial_reward = reward.get_weights()
    rng = np.random.default_rng(0)
    pair_mask = np.zeros((4, 2, 8), "float32")
    pair_mask[:, :, 3:] = 1.0
    pair_mask[0, 1, 6:] = 0.0  # a shorter rejected response
    mask = np.zeros((4, 8), "float32")
    mask[:, 3:] = 1.0
    np.savez(folder / "batch.npz",
             pair_ids=rng.integers(0, 12, (4, 2, 8)).astype("int32"), pair_mask=pair_mask,
             lengths=np.array([[8, 6], [7, 8], [5, 8], [8, 4]], "int32"),
             token_ids=rng.integers(0, 12, (4, 8)).astype("int32"), loss_mask=mask,
             labels=np.array([True, False, True, False]),
             kl_token_ids=rng.integers(0, 12, (4, 8)).astype("int32"), kl_loss_mask=mask)
    return initial, initial_reward


def _cases(backend) -> str:
    # The dropout seeds only have a JAX-specific path (state assigned inside the gradient).
    return ",".join([*CASES, "dropout"] if backend == "jax" else CASES)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(folder, initial policy weights, initial reward weights, {backend: CompletedChild})."""
    folder = tmp_path_factory.mktemp("preference_steps")
    initial, initial_reward = _write_inputs(folder)
    # The JAX and PyTorch children start first; TensorFlow's reference runs the same script in
    # this process meanwhile (the process already runs on TensorFlow).
    with start_backend_children(
            lambda backend: ["-c", CHILD, folder, json.dumps(CONFIG), _cases(backend)],
            installed(BACKENDS), timeout_s=600) as kids:
        children = {"tensorflow": run_script_here(
            CHILD, [folder, json.dumps(CONFIG), _cases("tensorflow")]), **kids.wait()}
    return folder, initial, initial_reward, children


def _result(runs, backend):
    """({case: {"train": logs, "test": logs, ...}}, {case: final weights}) of `backend`."""
    folder, _, _, children = runs
    result = children[backend].json()
    assert result.pop("backend") == backend
    weights = {}
    for case in CASES:
        saved = np.load(folder / f"{backend}_{case}.npz")
        weights[case] = [saved[k] for k in saved.files]
    return result, weights


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_step_equals_tensorflow(backend, case, runs):
    pytest.importorskip(backend)
    _, initial, initial_reward, _ = runs
    (tf_logs, tf_weights), (logs, weights) = _result(runs, "tensorflow"), _result(runs, backend)
    assert logs[case].keys() == tf_logs[case].keys()
    for phase in tf_logs[case]:
        assert_logs_close(logs[case][phase], tf_logs[case][phase], where=phase)
    assert tf_logs[case]["train"]["loss"] > 0
    if case == "rpo":
        assert tf_logs[case]["train"]["nll_loss"] > 0
    start = initial_reward if case == "reward" else initial
    assert_weights_close(weights[case], tf_weights[case], start, moved_more_than=1e-4)


def test_dropout_seeds_advance_through_the_jax_gradient(runs):
    """The dropout seed state is assigned inside `jax.value_and_grad`: it must leave the
    gradient and reach the new state, or every step would draw the same dropout masks."""
    pytest.importorskip("jax")
    result = runs[3]["jax"].json()["dropout"]
    assert result["seeds"] > 0 and result["moved"]
    first, second = result["losses"]
    assert first != pytest.approx(second, rel=1e-4)
