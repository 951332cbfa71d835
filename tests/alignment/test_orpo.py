"""ORPO (`kzoo.losses.orpo`, `kzoo.alignment.orpo.ORPOModel`): the odds-ratio term and the whole
loss checked against TRL's `ORPOTrainer` (trl==1.16.0, `trl.experimental.orpo`), run on a
stand-in `self` and a stand-in model whose logits are the kzoo model's; then the Keras contract
(config and `.keras` round trips, a fit step moves the policy) and bad input."""

import functools
import json
import types
from pathlib import Path

import keras
import numpy as np
import pytest

from kzoo.alignment import ORPOModel
from kzoo.alignment.orpo import real_token_mask
from kzoo.losses import log_odds_ratio, odds_ratio_loss
from kzoo.losses.orpo import log1mexp
from kzoo.models import CausalLM
from tests.helpers import load_recipe, one_error_line, sets

TINY = dict(vocab_size=16, num_layers=1, num_heads=2, hidden_dim=16, max_sequence_length=16)
LENGTH = 12


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    return CausalLM(**TINY)


def pairs(n=5, seed=0):
    """(n, 2, LENGTH) ids and masks: prompts of 2-4 tokens, responses of different lengths,
    then padding (so prompt, response and padding all differ between rows)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((n, 2, LENGTH), "float32")
    for i in range(n):
        start = 2 + i % 3
        mask[i, 0, start: start + 2 + i % 4] = 1.0
        mask[i, 1, start: start + 5 - i % 3] = 1.0
    return {"token_ids": rng.integers(0, TINY["vocab_size"], (n, 2, LENGTH)).astype("int32"),
            "loss_mask": mask}


def _orpo_trainer():
    return pytest.importorskip("trl.experimental.orpo.orpo_trainer").ORPOTrainer


def _trl_self(beta):
    """The attributes `ORPOTrainer`'s loss code reads, for one process on the CPU."""
    trainer = _orpo_trainer()
    accelerator = types.SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x)
    me = types.SimpleNamespace(beta=beta, accelerator=accelerator, is_encoder_decoder=False,
                               padding_value=0, aux_loss_enabled=False,
                               concatenated_inputs=trainer.concatenated_inputs,
                               get_batch_logps=trainer.get_batch_logps)
    me.odds_ratio_loss = functools.partial(trainer.odds_ratio_loss, me)
    me.concatenated_forward = functools.partial(trainer.concatenated_forward, me)
    return me


def trl_orpo(model, batch, beta):
    """TRL's full ORPO loss and metrics for kzoo's (pairs, 2, L) batch, the logits coming from
    the kzoo `model` (TRL's row order: the chosen rows, then the rejected rows)."""
    torch = pytest.importorskip("torch")
    ids, mask = batch["token_ids"], batch["loss_mask"]
    real = np.asarray(real_token_mask(mask))
    trl_batch = {}
    for j, side in enumerate(("chosen", "rejected")):
        trl_batch[f"{side}_input_ids"] = torch.tensor(ids[:, j], dtype=torch.long)
        trl_batch[f"{side}_attention_mask"] = torch.tensor(real[:, j], dtype=torch.long)
        labels = np.where(mask[:, j] > 0, ids[:, j], -100)
        trl_batch[f"{side}_labels"] = torch.tensor(labels, dtype=torch.long)

    def stand_in(input_ids, attention_mask=None, use_cache=False, **kwargs):
        # Causal: the logits of the first L-1 positions are those kzoo computes from ids[:, :-1].
        logits = np.asarray(model(input_ids.numpy().astype("int32")), "float32")
        return types.SimpleNamespace(logits=torch.tensor(logits))

    loss, metrics = _orpo_trainer().get_batch_loss_metrics(_trl_self(beta), stand_in, trl_batch)
    return float(loss), metrics


# ------------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("beta", [0.1, 0.25, 1.0])
def test_odds_ratio_loss_matches_trl(beta):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(int(beta * 100))
    # Log-probs near 0, around TRL's log1mexp branch point -ln 2, and far below.
    chosen = -np.concatenate([rng.uniform(1e-4, 0.05, 8), rng.uniform(0.6, 0.8, 8),
                              rng.uniform(1.0, 12.0, 8)]).astype("float32")
    rejected = rng.permutation(chosen) - rng.uniform(0.0, 1.0, chosen.shape).astype("float32")
    trl = _orpo_trainer().odds_ratio_loss(_trl_self(beta), torch.tensor(chosen),
                                          torch.tensor(rejected))
    ours = np.asarray(odds_ratio_loss(chosen, rejected, beta))
    # TRL returns beta * log sigmoid, which its loss subtracts: kzoo's per-pair loss is minus it.
    np.testing.assert_allclose(ours, -trl[0].numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.mean(np.asarray(log_odds_ratio(chosen, rejected))),
                               trl[4].item(), rtol=1e-6, atol=1e-6)
    assert np.all(ours > 0)


def test_log1mexp_is_exact_at_both_ends():
    x = np.array([-1e-6, -1e-3, -0.5, -0.6931, -0.7, -3.0, -30.0], "float64")
    want = np.log(-np.expm1(x))
    np.testing.assert_allclose(np.asarray(log1mexp(x.astype("float32"))), want, rtol=1e-5,
                               atol=1e-12)


def test_certain_responses_give_finite_loss():
    # Every token certain (mean log-prob 0): infinite odds; the cap keeps the loss finite.
    loss = np.asarray(odds_ratio_loss([0.0, -1.0], [-1.0, 0.0], beta=1.0))
    assert np.all(np.isfinite(loss)) and loss[0] < 1e-3 < loss[1]


# ------------------------------------------------------------------------------- the model
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_orpo_loss_and_metrics_match_trl(beta):
    policy = tiny_model()
    batch = pairs()
    orpo = ORPOModel(policy, beta=beta)
    loss, aux = orpo._loss(batch, training=False)
    trl_loss, trl_metrics = trl_orpo(policy, batch, beta)
    np.testing.assert_allclose(float(loss), trl_loss, rtol=1e-6, atol=1e-6)
    orpo.compile(optimizer="sgd", jit_compile=False)
    logged = orpo.evaluate(batch, batch_size=len(batch["token_ids"]), verbose=0,
                           return_dict=True)
    np.testing.assert_allclose(logged["loss"], trl_loss, rtol=1e-6, atol=1e-6)
    for ours, theirs in (("nll_loss", "nll_loss"), ("logps/chosen", "logps/chosen"),
                         ("logps/rejected", "logps/rejected"),
                         ("rewards/margin", "rewards/margins"),
                         ("rewards/accuracy", "rewards/accuracies"),
                         ("log_odds_ratio", "log_odds_ratio"),
                         ("log_odds_chosen", "log_odds_chosen")):
        np.testing.assert_allclose(logged[ours], trl_metrics[theirs], rtol=1e-5, atol=1e-6,
                                   err_msg=ours)


def test_prompt_nll_false_counts_the_response_only():
    policy = tiny_model()
    batch = pairs()
    ids, mask = batch["token_ids"][:, 0], batch["loss_mask"][:, 0]
    logits = np.asarray(policy(ids[:, :-1]), "float64")
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    token = np.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
    for prompt_nll, nll_mask in ((False, mask[:, 1:]),
                                 (True, np.asarray(real_token_mask(mask))[:, 1:])):
        _, aux = ORPOModel(policy, prompt_nll=prompt_nll)._loss(batch, training=False)
        want = -(token * nll_mask).sum() / nll_mask.sum()
        np.testing.assert_allclose(float(aux["nll"]), want, rtol=1e-5)
    assert mask[:, 1:].sum() < np.asarray(real_token_mask(mask))[:, 1:].sum()


def test_real_token_mask_ends_at_the_last_response_token():
    got = np.asarray(real_token_mask([[0.0, 1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]]))
    np.testing.assert_array_equal(got, [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])


def test_fit_steps_move_the_policy_and_prefer_the_chosen():
    policy = tiny_model()
    batch = pairs(n=4)
    before = [np.array(w) for w in policy.get_weights()]
    orpo = ORPOModel(policy, beta=1.0)
    orpo.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
    first = orpo.evaluate(batch, batch_size=4, verbose=0, return_dict=True)
    orpo.fit(batch, batch_size=4, epochs=15, verbose=0)
    after = orpo.evaluate(batch, batch_size=4, verbose=0, return_dict=True)
    moved = [not np.allclose(b, a) for b, a in zip(before, policy.get_weights(), strict=True)]
    assert all(moved), f"{moved.count(False)} of {len(moved)} weights did not move"
    assert after["loss"] < first["loss"]
    assert after["log_odds_chosen"] > first["log_odds_chosen"]


def test_config_and_keras_round_trip(tmp_path):
    policy = tiny_model()
    orpo = ORPOModel(policy, beta=0.3, prompt_nll=False, name="orpo")
    config = orpo.get_config()
    assert {k: config[k] for k in ("beta", "prompt_nll")} == {"beta": 0.3, "prompt_nll": False}
    assert "reference" not in config
    batch = pairs()
    want = np.asarray(orpo(batch))
    again = ORPOModel.from_config(config)
    again.policy.set_weights(policy.get_weights())
    np.testing.assert_allclose(np.asarray(again(batch)), want, rtol=1e-6)
    orpo.compile(optimizer="adamw", jit_compile=False)
    orpo.fit(batch, batch_size=5, epochs=1, verbose=0)  # optimizer state to save
    want = np.asarray(orpo(batch))
    path = tmp_path / "orpo.keras"
    orpo.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, ORPOModel) and loaded.get_config()["beta"] == 0.3
    assert loaded.compiled and isinstance(loaded.optimizer, keras.optimizers.AdamW)
    np.testing.assert_allclose(np.asarray(loaded(batch)), want, rtol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"beta": 0.0}, "`beta` must be a positive number. Received: beta=0.0"),
    ({"beta": True}, "`beta` must be a positive number"),
    ({"prompt_nll": "yes"}, "`prompt_nll` must be true or false"),
    ({"reference": "adapters_off"}, "ORPOModel uses no reference model"),
])
def test_bad_arguments_get_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as error:
        ORPOModel(tiny_model(), **kwargs)
    assert "\n" not in str(error.value)


# ------------------------------------------------------------------------------- the recipe
ORPO_YAML = Path(__file__).resolve().parents[2] / "recipes/configs/gpt/baby_instruction_orpo.yaml"


def _pairs_file(tmp_path, n=8):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([{"prompt": f"say {i}", "chosen": f"{i}", "rejected": f"{i + 1}"}
                                for i in range(n)]))
    return path


def test_recipe_trains_and_writes_the_run(tmp_path):
    from kzoo.viz import read_metrics

    run = tmp_path / "run"
    code = load_recipe("orpo").main(["--config", str(ORPO_YAML), *sets(
        f"run_dir={run}", f"data.path={_pairs_file(tmp_path)}", "model.preset=gpt_nano",
        "model.args={num_layers: 1}", "data.max_length=32", "data.validation_fraction=0.5",
        "train.epochs=1", "train.batch_size=2", "train.eval_interval=1", "train.verbose=0",
        "train.jit_compile=false", "orpo.beta=0.2")])
    assert code == 0
    columns = read_metrics(run / "metrics.csv")
    result = json.loads((run / "metrics.json").read_text())
    pairs_seen = result["split"]["train_pairs"]  # the split is by a hash of the prompt
    assert columns["step"] == [float(s) for s in range(1, (pairs_seen + 1) // 2 + 1)]
    assert len(columns["val_log_odds_chosen"]) == len(columns["step"])
    # A fresh byte model: about ln 257 nats per token, and the loss is that NLL plus the term.
    assert 3.0 < columns["nll_loss"][0] < 8.0
    assert columns["loss"][0] > columns["nll_loss"][0]
    assert pairs_seen + result["split"]["validation_pairs"] == 8
    assert "log_odds_ratio" in result["held_out_after"]
    assert (run / "config.yaml").read_text().startswith("# kzoo orpo --config ")
    assert "beta: 0.2" in (run / "config.yaml").read_text()
    assert isinstance(keras.saving.load_model(run / "model.keras"), CausalLM)


def test_recipe_refuses_bad_input_in_one_line(tmp_path, capsys):
    code = load_recipe("orpo").main(["--config", str(ORPO_YAML), *sets(
        f"run_dir={tmp_path / 'run'}", f"data.path={_pairs_file(tmp_path)}", "orpo.beta=-1")])
    assert code == 2
    line = one_error_line(capsys)
    assert "orpo.beta" in line and "> 0" in line, line
    assert not (tmp_path / "run").exists()


def test_odds_ratio_loss_default_beta_is_trl_one_tenth():
    np.testing.assert_allclose(np.asarray(odds_ratio_loss([-0.1], [-1.0])),
                               np.asarray(odds_ratio_loss([-0.1], [-1.0], beta=0.1)), rtol=0)
    np.testing.assert_allclose(np.asarray(odds_ratio_loss([-0.1], [-1.0])), [0.0059], atol=1e-4)


@pytest.mark.parametrize("floatx", ["float16", "bfloat16"])
def test_log_odds_are_float32_whatever_the_default_float(floatx):
    # The docstrings promise float32: with a float16/bfloat16 default float, a log-prob of
    # -0.0123 rounded to it would move log(1 - p) by ~1e-3; the odds must still match float64.
    chosen = np.array([-0.0123457, -0.7], "float32")
    rejected = np.array([-1.2345679, -0.0123457], "float32")
    c, r = chosen.astype("float64"), rejected.astype("float64")
    want = (c - r) - (np.log(-np.expm1(c)) - np.log(-np.expm1(r)))
    old = keras.config.floatx()
    keras.config.set_floatx(floatx)
    try:
        odds = log_odds_ratio(chosen, rejected)
        one_minus = log1mexp(chosen)
    finally:
        keras.config.set_floatx(old)
    assert keras.backend.standardize_dtype(odds.dtype) == "float32"
    assert keras.backend.standardize_dtype(one_minus.dtype) == "float32"
    np.testing.assert_allclose(np.asarray(odds), want, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(one_minus), np.log(-np.expm1(c)), rtol=1e-5)
