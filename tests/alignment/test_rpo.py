"""RPO (`DPOModel(rpo_alpha=...)`): DPO plus rpo_alpha times the policy's NLL of the chosen
tokens, a mean over every chosen token of the batch. Checked against TRL's
`DPOTrainer._compute_loss` (trl==1.16.0 has no `rpo_alpha`: RPO is `loss_type=["sigmoid",
"sft"]` with `loss_weights=[1.0, rpo_alpha]`), run on a stand-in `self` and a stand-in model
whose per-token log-probs are the values under test; against NumPy through `evaluate` on a real
model; and for the gradient, the recipe's check and two replicas."""

import collections
import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from kzoo import losses
from kzoo.alignment.dpo import DPOModel, frozen_copy
from kzoo.data.preference import preference_dataset
from kzoo.models import CausalLM
from tests.helpers import load_recipe, one_error_line, sets

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(vocab_size=16, num_layers=1, num_heads=2, hidden_dim=16, max_sequence_length=16)
LENGTH = 10


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    return CausalLM(**TINY)


def pairs(n=6, seed=0):
    """(n, 2, LENGTH) ids and masks; chosen and rejected responses of different lengths."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((n, 2, LENGTH), "float32")
    for i in range(n):
        mask[i, 0, 2 + i % 5:] = 1.0
        mask[i, 1, 3 + (i * 3) % 6:] = 1.0
    return {"token_ids": rng.integers(0, TINY["vocab_size"], (n, 2, LENGTH)).astype("int32"),
            "loss_mask": mask, "lengths": np.full((n, 2), LENGTH)}


def np_token_logps(model, ids):
    """(rows, L-1) float64 log p(token t+1 | tokens 0..t), from the model's logits."""
    logits = np.asarray(model(ids[:, :-1]), "float64")
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    return np.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]


# ----------------------------------------------------------------------------- TRL
class _Accelerator:
    def __init__(self, device):
        self.device = device

    def gather_for_metrics(self, x):  # one process
        return x

    gather = gather_for_metrics


def trl_dpo(token_logps, shift_mask, reference, beta, rpo_alpha, norm=False):
    """TRL's loss and d loss / d token_logps, for (2n, L-1) per-token log-probs in TRL's row
    order (the n chosen rows, then the n rejected rows) and (n, 2) reference log-probs."""
    torch = pytest.importorskip("torch")
    dpo_trainer = pytest.importorskip("trl.trainer.dpo_trainer")
    table = torch.tensor(token_logps, dtype=torch.float64, requires_grad=True)
    shift = torch.tensor(shift_mask, dtype=torch.float64)

    def model(input_ids=None, **_):
        # The fused head scores only labelled (completion) targets; others read 0.
        zeros = torch.zeros_like(shift)
        return types.SimpleNamespace(log_probs=table * shift, entropy=zeros, mean_logits=zeros,
                                     is_top1=zeros.bool())

    model.training = True
    accelerator = _Accelerator(torch.device("cpu"))
    trainer = types.SimpleNamespace(
        model=model, accelerator=accelerator, aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, f_divergence_type="reverse_kl", use_weighting=False,
        loss_types=["sigmoid_norm" if norm else "sigmoid", "sft"],
        loss_weights=[1.0, rpo_alpha], beta=beta,
        _metrics={"train": collections.defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    rows = shift.shape[0]
    # completion_mask (2n, L): the prompt's first token is never a completion token.
    completion = torch.cat([torch.zeros(rows, 1), shift], dim=1).long()
    batch = {"input_ids": torch.zeros_like(completion), "completion_mask": completion,
             "attention_mask": torch.ones_like(completion),
             "ref_chosen_logps": torch.tensor(reference[:, 0], dtype=torch.float64),
             "ref_rejected_logps": torch.tensor(reference[:, 1], dtype=torch.float64)}
    loss = dpo_trainer.DPOTrainer._compute_loss(trainer, model, batch, False)
    loss.backward()
    return loss.item(), table.grad.numpy()


def kzoo_dpo(token_logps, shift_mask, reference, beta, rpo_alpha, average=False):
    """kzoo's loss from the same per-token log-probs: everything after `pair_logps`."""
    n = len(reference)
    table = tf.Variable(token_logps, dtype=tf.float32)
    mask = np.concatenate([np.zeros((2 * n, 1)), shift_mask], axis=1)  # (2n, L)
    loss_mask = np.stack([mask[:n], mask[n:]], axis=1).astype("float32")  # (n, 2, L)
    dpo = DPOModel(tiny_model(), reference=None, beta=beta, rpo_alpha=rpo_alpha,
                   average_log_prob=average)
    with tf.GradientTape() as tape:
        rows = tf.reduce_sum(table * shift_mask, axis=-1)  # (2n,)
        if average:
            rows = rows / np.maximum(shift_mask.sum(-1), 1.0)
        policy_logps = tf.stack([rows[:n], rows[n:]], axis=1)  # (n, 2)
        per_pair, _ = dpo._pair_losses(policy_logps, reference, loss_mask)
        loss, nll = dpo._loss(per_pair, policy_logps, loss_mask)
    return float(loss), tape.gradient(loss, table).numpy(), nll


def _case(seed, n, length):
    rng = np.random.default_rng(seed)
    token_logps = rng.normal(-2.0, 1.0, (2 * n, length - 1))
    shift = np.zeros((2 * n, length - 1))
    for r in range(2 * n):
        shift[r, rng.integers(1, length - 2):] = 1.0  # responses of 1 .. length-2 targets
    reference = rng.normal(-2.0 * (length / 2), 3.0, (n, 2))
    return token_logps, shift, reference


@pytest.mark.parametrize("seed, n, length, beta, alpha", [
    (0, 4, 8, 0.1, 1.0), (1, 7, 12, 0.5, 0.5), (2, 3, 6, 2.0, 0.0), (3, 16, 9, 1.0, 2.5)])
@pytest.mark.parametrize("average", [False, True])
def test_rpo_loss_and_gradient_match_trl(seed, n, length, beta, alpha, average):
    """average_log_prob=True is TRL's length-normalised "sigmoid_norm": the RPO term is the
    same per-token mean either way."""
    token_logps, shift, reference = _case(seed, n, length)
    if average:
        reference = reference / shift.sum(-1).reshape(2, n).T  # per-token mean references
        trl_ref = reference * shift.sum(-1).reshape(2, n).T  # TRL normalises after the ratio
    else:
        trl_ref = reference
    loss, grad = trl_dpo(token_logps, shift, trl_ref, beta, alpha, norm=average)
    ours, our_grad, nll = kzoo_dpo(token_logps, shift, reference, beta, alpha, average)
    assert ours == pytest.approx(loss, abs=1e-5)
    np.testing.assert_allclose(our_grad, grad, atol=1e-6)
    chosen = shift[:n] > 0
    if alpha:
        assert float(nll) == pytest.approx(-token_logps[:n][chosen].mean(), abs=1e-5)
        # The term really is in both: without it the losses part.
        no_rpo, _ = trl_dpo(token_logps, shift, trl_ref, beta, 0.0, norm=average)
        assert abs(loss - no_rpo) > 0.1
    else:
        assert nll is None


# ----------------------------------------------------------------------------- the model
def _compiled(policy, reference, **kwargs):
    dpo = DPOModel(policy, reference, **kwargs)
    dpo.compile(optimizer=keras.optimizers.SGD(0.0))  # a step that changes nothing
    return dpo


@pytest.mark.parametrize("alpha, average", [(0.7, False), (2.0, True)])
def test_evaluate_logs_dpo_plus_alpha_chosen_nll(alpha, average):
    """6 pairs in batches of 4 and 2: each batch's loss is its pairs' DPO mean plus alpha x its
    per-token chosen NLL; the epoch's logs weight the batches by their pairs."""
    policy, reference = tiny_model(0), tiny_model(1)
    data = pairs()
    logs = _compiled(policy, reference, beta=0.3, rpo_alpha=alpha,
                     average_log_prob=average).evaluate(
        preference_dataset(data, 4, shuffle=False), return_dict=True, verbose=0)
    ids, mask = data["token_ids"].reshape(-1, LENGTH), data["loss_mask"].reshape(-1, LENGTH)
    pol_tok, ref_tok = np_token_logps(policy, ids), np_token_logps(reference, ids)
    shift = mask[:, 1:]
    count = np.maximum(shift.sum(-1), 1.0) if average else 1.0
    pol = ((pol_tok * shift).sum(-1) / count).reshape(6, 2)
    ref = ((ref_tok * shift).sum(-1) / count).reshape(6, 2)
    dpo_terms = np.asarray(losses.get("sigmoid")(pol[:, 0] - ref[:, 0], pol[:, 1] - ref[:, 1],
                                                 0.3), "float64")
    chosen_tok, chosen_shift = pol_tok.reshape(6, 2, -1)[:, 0], shift.reshape(6, 2, -1)[:, 0]
    batch_loss, batch_nll = [], []
    for rows in (slice(0, 4), slice(4, 6)):
        nll = -(chosen_tok[rows] * chosen_shift[rows]).sum() / chosen_shift[rows].sum()
        batch_nll.append(nll)
        batch_loss.append(dpo_terms[rows].mean() + alpha * nll)
    weights = [4, 2]
    np.testing.assert_allclose(logs["nll_loss"], np.average(batch_nll, weights=weights),
                               rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], np.average(batch_loss, weights=weights), rtol=1e-5)
    np.testing.assert_allclose(logs["logps/chosen"], pol[:, 0].mean(), rtol=1e-5)


def test_rpo_alpha_zero_is_plain_dpo():
    """rpo_alpha=0 logs no nll_loss and keeps DPO's loss (float32, the same ops) to 1e-7, in
    evaluation and along a training run, whose weights match the default model's exactly."""
    data = pairs()
    dataset = preference_dataset(data, 6, shuffle=False)
    runs = []
    for kwargs in ({}, {"rpo_alpha": 0.0}, {"rpo_alpha": 0}):
        policy = tiny_model(0)
        dpo = DPOModel(policy, frozen_copy(tiny_model(1)), beta=0.3, **kwargs)
        dpo.compile(optimizer=keras.optimizers.SGD(0.3))
        before = dpo.evaluate(dataset, return_dict=True, verbose=0)
        history = dpo.fit(dataset, epochs=2, verbose=0, shuffle=False).history
        runs.append((before, history, policy.get_weights()))
        assert "nll_loss" not in before and "nll_loss" not in history
    for before, history, weights in runs[1:]:
        assert before == runs[0][0] and history == runs[0][1]
        for a, b in zip(weights, runs[0][2]):
            np.testing.assert_array_equal(a, b)
    policy, reference = tiny_model(0), tiny_model(1)
    pol = DPOModel(policy)(data)
    ref = DPOModel(reference)(data)
    expected = tf.reduce_mean(losses.get("sigmoid")(pol[:, 0] - ref[:, 0], pol[:, 1] - ref[:, 1],
                                                    0.3))
    logs = _compiled(policy, reference, beta=0.3, rpo_alpha=0.0).evaluate(
        dataset, return_dict=True, verbose=0)
    assert abs(logs["loss"] - float(expected)) < 1e-7


@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_nll_gradient_reaches_the_policy_when_the_dpo_term_is_zero(alpha):
    """Hinge loss past its margin: the DPO term and its gradient are exactly 0, so one SGD step
    is -lr x alpha x the gradient of the chosen NLL (keras' cross-entropy, taken here)."""
    policy = tiny_model(0)
    data = pairs(4)
    logps = np.asarray(DPOModel(policy)(data))
    # Chosen log-ratio +10, rejected -10: beta * margin = 2 > 1, hinge = 0.
    data["reference_logps"] = (logps + [[-10.0, 10.0]]).astype("float32")
    start = [w.copy() for w in policy.get_weights()]
    ids = data["token_ids"][:, 0]
    chosen_mask = data["loss_mask"][:, 0, 1:]
    with tf.GradientTape() as tape:
        nll = keras.losses.sparse_categorical_crossentropy(ids[:, 1:], policy(ids[:, :-1]),
                                                           from_logits=True)  # (pairs, L-1)
        nll = tf.reduce_sum(nll * chosen_mask) / chosen_mask.sum()
    grads = tape.gradient(nll, policy.trainable_variables)
    dpo = DPOModel(policy, None, loss="hinge", beta=0.1, rpo_alpha=alpha)
    dpo.compile(optimizer=keras.optimizers.SGD(0.5))
    history = dpo.fit(preference_dataset(data, 4, shuffle=False), epochs=1, verbose=0,
                      shuffle=False).history
    assert history["rewards/margin"][0] == pytest.approx(2.0, abs=1e-4)
    np.testing.assert_allclose(history["loss"][0], alpha * float(nll), rtol=1e-5, atol=1e-7)
    moved = 0.0
    for variable, before, grad in zip(policy.trainable_variables, start, grads):
        grad = tf.convert_to_tensor(grad).numpy()  # the embedding's gradient is sparse
        np.testing.assert_allclose(variable.numpy(), before - 0.5 * alpha * grad,
                                   rtol=1e-4, atol=1e-6)
        moved += float(np.abs(variable.numpy() - before).sum())
    assert (moved > 1e-3) == (alpha > 0)


def test_rpo_alpha_in_config_and_bad_values():
    policy = tiny_model()
    dpo = DPOModel(policy, rpo_alpha=0.25)
    assert dpo.get_config()["rpo_alpha"] == 0.25
    assert DPOModel.from_config(dpo.get_config()).rpo_alpha == 0.25
    assert "nll_loss" in [m.name for m in dpo.metrics]
    assert DPOModel(policy).rpo_alpha == 0.0
    for bad in (-0.1, True, math.inf, math.nan, "1"):
        with pytest.raises(ValueError, match=r"`rpo_alpha` must be a finite number >= 0"):
            DPOModel(policy, rpo_alpha=bad)


def test_recipe_refuses_a_negative_rpo_alpha(tmp_path, capsys):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([{"prompt": "Q", "chosen": "A", "rejected": "B"}] * 4))
    code = load_recipe("dpo").main(
        ["--config", str(ROOT / "recipes/configs/gpt/nano_preference_dpo.yaml"),
         *sets(f"run_dir={tmp_path / 'run'}", f"data.path={path}", "dpo.rpo_alpha=-0.5")])
    assert code == 2
    line = one_error_line(capsys)
    assert "dpo.rpo_alpha" in line and ">= 0" in line and "-0.5" in line, line
    assert not (tmp_path / "run").exists()


def test_recipe_trains_with_rpo_and_logs_the_nll(tmp_path):
    from kzoo.viz import read_metrics

    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([{"prompt": f"say {i}", "chosen": f"{i}", "rejected": f"{i + 1}"}
                                for i in range(8)]))
    code = load_recipe("dpo").main(
        ["--config", str(ROOT / "recipes/configs/gpt/nano_preference_dpo.yaml"),
         *sets(f"run_dir={tmp_path / 'run'}", f"data.path={path}", "model.args={num_layers: 1}",
               "data.max_length=32", "data.validation_fraction=0.5", "train.verbose=0",
               "train.jit_compile=false", "train.eval_interval=2", "dpo.rpo_alpha=0.5")])
    assert code == 0
    columns = read_metrics(tmp_path / "run/metrics.csv")
    assert columns["nll_loss"] and columns["val_nll_loss"]
    # A fresh byte model: about ln 257 nats per chosen token, and the loss includes 0.5 x it.
    assert 3.0 < columns["nll_loss"][0] < 8.0
    assert columns["loss"][0] > 0.5 * columns["nll_loss"][0]
    assert "rpo_alpha: 0.5" in (tmp_path / "run/config.yaml").read_text()


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_feedback_loop_passes_rpo_alpha(alpha):
    from kzoo.alignment import feedback_loop as fl
    from kzoo.training.config import config_from_dict

    config = fl.LoopConfig(
        max_operand=6, lines_per_problem=16, pretrain_epochs=4, pretrain_batch_size=32,
        samples_per_prompt=8, eval_samples_per_prompt=2, rounds=1, dpo_epochs=1,
        model=dict(num_layers=1, num_heads=2, hidden_dim=16, max_sequence_length=16),
        control=False, num_show=0, rpo_alpha=alpha)
    history = fl.run_feedback_loop(config, log=lambda *a: None)["dpo_history"]
    assert ("nll_loss" in history) == (alpha > 0)
    with pytest.raises(ValueError, match="rpo_alpha.*>= 0"):
        config_from_dict({"rpo_alpha": -1.0}, fl.LoopConfig)


# ----------------------------------------------------------------------------- 2 replicas
SCRIPT = r"""
import json, os
os.environ["KERAS_BACKEND"] = "tensorflow"
from kzoo.training.distribute import split_cpu
split_cpu(2)
import keras, numpy as np, tensorflow as tf
from kzoo.data.preference import preference_dataset
from kzoo.models import CausalLM
from kzoo.alignment.dpo import DPOModel

rng = np.random.default_rng(0)
n, length = 8, 12
mask = np.zeros((n, 2, length), "float32")
for i in range(n):  # replica 0's chosen responses are long, replica 1's short
    mask[i, 0, (2 if i < n // 2 else 9):] = 1.0
    mask[i, 1, 5:] = 1.0
arrays = {"token_ids": rng.integers(0, 16, (n, 2, length)).astype("int32"), "loss_mask": mask}
cfg = dict(vocab_size=16, num_layers=1, num_heads=2, hidden_dim=16, max_sequence_length=16)
keras.utils.set_random_seed(1)
w_policy, w_reference = CausalLM(**cfg).get_weights(), CausalLM(**cfg).get_weights()

def run(strategy):
    with strategy.scope():
        policy = CausalLM(**cfg); policy.set_weights(w_policy)
        reference = CausalLM(**cfg); reference.set_weights(w_reference)
        dpo = DPOModel(policy, reference, beta=0.5, rpo_alpha=0.8)
        dpo.compile(optimizer=keras.optimizers.SGD(0.5))
    data = preference_dataset(arrays, n, shuffle=False)
    history = dpo.fit(data, epochs=2, verbose=0).history
    logs = dpo.evaluate(data, verbose=0, return_dict=True)
    return history, logs, [v.numpy().tolist() for v in policy.trainable_variables]

single = run(tf.distribute.get_strategy())
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert mirrored.num_replicas_in_sync == 2
print("RESULT" + json.dumps({"single": single, "mirrored": run(mirrored)}))
"""


def test_two_replicas_take_the_one_device_step():
    """The chosen tokens are split unevenly between the replicas: the NLL is divided by the
    global count, so the step and the logs match one device's on the whole batch."""
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    result = json.loads(line[len("RESULT"):])
    (h1, e1, w1), (h2, e2, w2) = result["single"], result["mirrored"]
    assert "nll_loss" in h1 and abs(h1["loss"][1] - h1["loss"][0]) > 1e-3
    for name in h1:
        np.testing.assert_allclose(h2[name], h1[name], rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(e2[name], e1[name], rtol=1e-5, atol=1e-6, err_msg=name)
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-4, atol=1e-6)
