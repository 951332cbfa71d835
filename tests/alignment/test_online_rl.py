"""The GRPO / RLOO loop on a tiny model: rollouts, the train step, the checks and the logs."""

import keras
import numpy as np
import pytest

from kzoo.alignment.online import PolicyGradientModel, TokenLogps, token_logps
from kzoo.alignment.rl import OnlineConfig, build_trainer, sample_rewards, train_online
from kzoo.alignment.rollout import encode_prompts, predict_rows, sample_groups
from kzoo.data.prompts import PromptSet
from kzoo.models import CausalLM
from kzoo.tokenizers import CharTokenizer

TOK = CharTokenizer("abcdxyz")


def tiny_policy(seed=0):
    keras.utils.set_random_seed(seed)
    return CausalLM(vocab_size=TOK.vocab_size, num_layers=1, num_heads=2, hidden_dim=16,
                    intermediate_dim=32, max_sequence_length=16)


def prompts(n=4):
    return PromptSet(["ab", "ba", "cd", "dc"][:n], {"want": ["x", "x", "y", "y"][:n]},
                     [f"test line {i + 1}" for i in range(n)])


class FirstLetter:
    """1.0 when the completion starts with the prompt's wanted letter."""

    def __call__(self, prompts, completions, columns, completion_ids, finished):
        r = np.array([float(c[:1] == w) for c, w in zip(completions, columns["want"])])
        return r, {"first_letter": r}


class Constant:
    def __call__(self, prompts, completions, columns, completion_ids, finished):
        r = np.ones(len(completions))
        return r, {"constant": r}


def config(**overrides):
    base = dict(num_generations=4, batch_size=8, max_new_tokens=3, max_prompt_length=4,
                jit_compile=False)
    return OnlineConfig(**{**base, **overrides})


def test_rollout_rows_hold_prompt_completion_and_its_end_token():
    policy = tiny_policy()
    ids = encode_prompts(["ab", "c"], TOK, max_prompt_length=4)
    batch = sample_groups(policy, TOK, ids, group_size=3, max_new_tokens=4, max_prompt_length=4,
                          sampler="random", seed=1, jit_compile=False)
    assert batch.token_ids.shape == (6, 4 + 4 + 1)
    for i in range(6):
        prompt = ids[i // 3]
        row, mask = batch.token_ids[i], batch.completion_mask[i]
        np.testing.assert_array_equal(row[: len(prompt)], prompt)
        completion = batch.completion_ids[i] + ([TOK.eot_id] if batch.finished[i] else [])
        start = len(prompt)
        np.testing.assert_array_equal(row[start: start + len(completion)], completion)
        assert mask.sum() == len(completion) and mask[start: start + len(completion)].all()
        assert batch.finished[i] == (len(batch.completion_ids[i]) < 4
                                     or TOK.eot_id in row[start:])
        assert batch.texts[i] == TOK.decode(batch.completion_ids[i])


def test_old_logps_of_the_sampler_equal_the_train_steps_logps():
    policy = tiny_policy()
    ids = encode_prompts(["ab"], TOK, max_prompt_length=4)
    batch = sample_groups(policy, TOK, ids, 4, 3, 4, seed=0, jit_compile=False)
    scorer = TokenLogps(policy, temperature=0.7)
    got = predict_rows(scorer, batch.token_ids, batch_size=3)  # a padded last slice
    want, _ = token_logps(policy, batch.token_ids, temperature=0.7)
    np.testing.assert_allclose(got, np.asarray(want), atol=1e-5)


def test_grpo_pushes_up_the_rewarded_completion():
    policy = tiny_policy()
    cfg = config(batch_size=16, zero_std_warn_steps=100)
    trainer = build_trainer(policy, cfg, keras.optimizers.Adam(3e-2))
    before = sample_rewards(policy, TOK, prompts(), FirstLetter(), 16, 3, seed=5,
                            jit_compile=False)["reward"]
    history = train_online(trainer, TOK, prompts(), FirstLetter(), cfg, steps=25, log=lambda m: 0)
    after = sample_rewards(policy, TOK, prompts(), FirstLetter(), 16, 3, seed=5,
                           jit_compile=False)["reward"]
    assert after > before + 0.3, (before, after)
    assert len(history) == 25
    for key in ("reward", "reward_std", "rewards/first_letter/mean", "frac_reward_zero_std",
                "kl", "entropy", "clip_ratio/region_mean", "completions/mean_length",
                "completions/max_length", "completions/clipped_ratio", "learning_rate",
                "tokens_per_second", "generation_share"):
        assert key in history[-1], key
    assert 0 < history[-1]["generation_share"] < 1
    assert history[-1]["learning_rate"] == pytest.approx(3e-2)


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_iterations_with_a_reference_keep_old_logps_and_measure_kl(algorithm):
    policy = tiny_policy()
    reference = tiny_policy()
    reference.set_weights(policy.get_weights())
    cfg = config(algorithm=algorithm, num_iterations=2, steps_per_generation=2, beta=0.1)
    trainer = build_trainer(policy, cfg, keras.optimizers.Adam(3e-2))
    history = train_online(trainer, TOK, prompts(), FirstLetter(), cfg, steps=4,
                           reference=reference, log=lambda m: 0)
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # policy == reference at first
    assert history[-1]["kl"] != pytest.approx(0.0, abs=1e-5)
    # The second pass over a batch sees ratios away from 1: clipping can happen.
    assert all(np.isfinite(h["loss"]) for h in history)


def test_equal_rewards_everywhere_warn_no_learning_signal():
    policy = tiny_policy()
    cfg = config(zero_std_warn_steps=3)
    trainer = build_trainer(policy, cfg, keras.optimizers.Adam(1e-3))
    lines = []
    with pytest.warns(UserWarning, match="no learning signal"):
        history = train_online(trainer, TOK, prompts(), Constant(), cfg, steps=4,
                               log=lines.append)
    assert all(h["frac_reward_zero_std"] == 1.0 for h in history)
    assert sum("no learning signal" in line for line in lines) == 1


@pytest.mark.parametrize("overrides, match", [
    ({"num_generations": 1, "batch_size": 8}, "at least 2"),
    ({"num_generations": 3, "batch_size": 8}, "set batch_size to 6 or 9"),
    ({"batch_size": 8, "steps_per_generation": 3}, "steps_per_generation=3"),
    ({"algorithm": "ppo"}, "algorithm must be one of"),
    ({"scale_rewards": "std"}, "scale_rewards must be one of"),
    ({"loss_type": "sum"}, "loss_type must be one of"),
])
def test_bad_settings_are_one_line(overrides, match):
    with pytest.raises(ValueError, match=match) as info:
        config(**overrides).check()
    assert "\n" not in str(info.value)


def test_beta_without_a_reference_is_refused():
    policy = tiny_policy()
    cfg = config(beta=0.1)
    trainer = build_trainer(policy, cfg, keras.optimizers.Adam(1e-3))
    with pytest.raises(ValueError, match="need a reference"):
        train_online(trainer, TOK, prompts(), FirstLetter(), cfg, steps=1)


def test_policy_gradient_model_config_round_trips():
    model = PolicyGradientModel(tiny_policy(), algorithm="rloo", beta=0.05, epsilon=0.1,
                                epsilon_high=0.3, loss_type="bnpo", temperature=0.9)
    restored = PolicyGradientModel.from_config(model.get_config())
    for key in ("algorithm", "beta", "epsilon", "epsilon_high", "loss_type", "temperature"):
        assert getattr(restored, key) == getattr(model, key)


def test_prompt_kl_adds_the_mean_k3_over_prompt_tokens():
    from kzoo.alignment.online import objective

    rng = np.random.default_rng(0)
    rows, length = 4, 7
    logps = rng.normal(-1.0, 0.5, (rows, length - 1)).astype("float32")
    ref = (logps + rng.normal(0, 0.3, logps.shape)).astype("float32")
    prompt = np.zeros((rows, length), "float32")
    prompt[:, :3] = 1.0
    completion = np.zeros((rows, length), "float32")
    completion[:, 3:6] = 1.0
    inputs = {"completion_mask": completion, "advantages": rng.normal(size=rows),
              "ref_logps": ref, "prompt_mask": prompt}
    base, _ = objective("grpo", logps, np.zeros_like(logps), inputs, beta=0.0)
    loss, values = objective("grpo", logps, np.zeros_like(logps), inputs, beta=0.0,
                             prompt_kl_coef=0.5)
    r = ref - logps
    k3 = np.exp(r) - r - 1
    want = (k3 * prompt[:, 1:]).sum() / prompt[:, 1:].sum()  # targets 1, 2 of each row
    assert float(values["kl/prompt"]) == pytest.approx(want, rel=1e-5)
    assert float(loss) == pytest.approx(float(base) + 0.5 * want, rel=1e-5)


def test_prompt_kl_needs_a_reference():
    policy = tiny_policy()
    cfg = config(prompt_kl_coef=0.5)
    trainer = build_trainer(policy, cfg, keras.optimizers.Adam(1e-3))
    with pytest.raises(ValueError, match="need a reference"):
        train_online(trainer, TOK, prompts(), FirstLetter(), cfg, steps=1)
