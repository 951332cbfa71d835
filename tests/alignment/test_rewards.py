"""Reward functions for GRPO / RLOO: TRL's calling convention and weighting, the built-ins, the
file and reward-model specs, and every bad input as one line."""

import json
import math
import os
import types
from pathlib import Path

import numpy as np
import pytest

from kzoo.alignment.feedback_loop import rate
from kzoo.alignment.rewards import (
    Reward,
    RewardError,
    RewardSet,
    get_reward,
    list_rewards,
    load_reward,
    register_reward,
    reward_set_from_config,
)

ROOT = Path(__file__).resolve().parents[2]


def _batch(n=4):
    """n completions: prompts, completions, columns, completion_ids, finished."""
    prompts = [f"{i:02d}+01=" for i in range(n)]
    completions = [f"{i + 1:02d}" if i % 2 == 0 else "xx" for i in range(n)]
    columns = {"answer": [i + 1 for i in range(n)], "level": ["easy"] * n}
    ids = [[i] * (i + 1) for i in range(n)]
    finished = [i != n - 1 for i in range(n)]
    return prompts, completions, columns, ids, finished


# ----------------------------------------------------------------------------- built-ins
def test_registry_lists_and_refuses():
    assert {"exact_match", "length", "format_ends"} <= set(list_rewards())
    with pytest.raises(ValueError, match=r"unknown reward 'exakt'; built-in rewards: \["):
        get_reward("exakt")
    with pytest.raises(ValueError, match="'length' is already registered"):
        register_reward("length")(lambda completions: [])


def test_register_reward_adds_a_spec():
    from kzoo.alignment.builtin_rewards import _REWARDS

    @register_reward("test_only_short")
    def short(completions, **kwargs):
        return [float(len(c) < 3) for c in completions]

    try:
        reward = load_reward("test_only_short")
        assert reward.name == "test_only_short"
        np.testing.assert_array_equal(reward(["p", "p"], ["ab", "abcd"]), [1.0, 0.0])
    finally:
        del _REWARDS["test_only_short"]


def test_exact_match_is_the_arithmetic_rater():
    reward = load_reward("exact_match")
    prompts, completions, finished, answers, expected = [], [], [], [], []
    for a, b in [(7, 13), (0, 0), (49, 49), (3, 5)]:
        for text in [f"{a + b:02d}", f"{a + b}", f"{a + b + 1:02d}", ""]:
            for done in (True, False):
                prompts.append(f"{a:02d}+{b:02d}=")
                completions.append(text)
                finished.append(done)
                answers.append(f"{a + b:02d}")
                expected.append(float(rate(a, b, text, done)))
    got = reward(prompts, completions, {"answer": answers}, [[0]] * len(prompts), finished)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.float32 and 0 < got.sum() < len(got)
    # the answer is compared as text, stripped; a conversational completion by its content
    assert reward(["q"] * 2, [" 20\n", [{"role": "assistant", "content": "20 "}]],
                  {"answer": [20, " 20"]}, [[1], [1]], [True, True]).tolist() == [1.0, 1.0]


def test_arithmetic_example_file_matches_rate(monkeypatch):
    monkeypatch.chdir(ROOT)  # the spec is relative to the current directory
    correct = load_reward("recipes/rewards/arithmetic.py:correct")
    assert correct.name == "correct"
    cases = [(a, b, text, done) for a in (0, 9, 25) for b in (1, 24)
             for text in (f"{a + b:02d}", f"{a + b + 2:02d}", f"{a + b}", f" {a + b:02d}")
             for done in (True, False)]
    got = correct([f"{a:02d}+{b:02d}=" for a, b, _, _ in cases], [c[2] for c in cases],
                  {"answer": [a + b for a, b, _, _ in cases]}, [[1]] * len(cases),
                  [c[3] for c in cases])
    np.testing.assert_array_equal(got, [float(rate(*c)) for c in cases])
    assert 0 < got.sum() < len(cases)


def test_length_and_format_ends():
    prompts, completions, columns, ids, finished = _batch()
    assert load_reward("length")(prompts, completions, columns, ids, finished).tolist() == \
        [float(len(x)) for x in ids]
    assert load_reward("format_ends")(prompts, completions, columns, ids, finished).tolist() \
        == [1.0, 1.0, 1.0, 0.0]


# ----------------------------------------------------------------------------- the convention
def test_columns_arrive_as_keywords_only_those_named():
    seen = {}

    def picky(completions, answer):
        seen["picky"] = {"completions": completions, "answer": answer}
        return [0.0] * len(completions)

    def greedy(prompts, **kwargs):
        seen["greedy"] = {"prompts": prompts, **kwargs}
        return [0.0] * len(prompts)

    prompts, completions, columns, ids, finished = _batch()
    RewardSet([Reward(picky), Reward(greedy)])(prompts, completions, columns, ids, finished)
    assert seen["picky"] == {"completions": completions, "answer": columns["answer"]}
    assert seen["greedy"] == {"prompts": prompts, "completions": completions,
                              "completion_ids": ids, "finished": finished, **columns}


def test_a_reward_cannot_change_what_the_next_one_reads():
    def vandal(completions, answer, **kwargs):
        answer[:] = [None] * len(answer)
        completions.clear()
        return [0.0] * len(answer)

    prompts, completions, columns, ids, finished = _batch()
    columns["answer"] = ["01", "02", "03", "04"]
    _, per = RewardSet([Reward(vandal), load_reward("exact_match")])(
        prompts, completions, columns, ids, finished)
    assert per["exact_match"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert columns["answer"] == ["01", "02", "03", "04"] and completions == _batch()[1]


def test_missing_column_is_named():
    with pytest.raises(RewardError) as info:
        load_reward("exact_match")(["p"], ["1"], {"level": ["x"]}, [[1]], [True])
    assert str(info.value).startswith("reward 'exact_match' needs ['answer'], which the "
                                      "prompts do not provide; it gets ['completion_ids',")


def test_a_raising_reward_is_one_line_with_the_cause_chained():
    def boom(completions, **kwargs):
        raise TypeError("unsupported operand\n  on line two")

    with pytest.raises(RewardError) as info:
        Reward(boom)(*_batch())
    assert str(info.value) == "reward 'boom' raised TypeError: unsupported operand on line two"
    assert isinstance(info.value, ValueError) and isinstance(info.value.__cause__, TypeError)


@pytest.mark.parametrize("out, message", [
    ([1.0, 2.0, 3.0], "reward 'f' returned 3 values for 8 completions"),
    ([0.0] * 5 + [math.nan] + [0.0] * 2, "reward 'f' returned nan for completion 5"),
    ([0.0] * 7 + [math.inf], "reward 'f' returned inf for completion 7"),
    ([0.0, "1.0"] + [0.0] * 6, "reward 'f' returned '1.0' (str) for completion 1, not a number"),
    (1.0, "reward 'f' returned a float, not a list of 8 numbers"),
    ("0" * 8, "reward 'f' returned a str, not a list of 8 numbers"),
])
def test_bad_outputs(out, message):
    reward = Reward(lambda completions: out, name="f")
    with pytest.raises(RewardError) as info:
        reward(["p"] * 8, ["c"] * 8)
    assert str(info.value) == message


def test_numpy_bool_and_int_outputs_are_numbers():
    reward = Reward(lambda completions: np.array([True, False]), name="f")
    assert reward(["p"] * 2, ["c"] * 2).tolist() == [1.0, 0.0]
    assert Reward(lambda completions: [3, np.int64(2)])(["p"] * 2, ["c"] * 2).tolist() == [3, 2]


def test_inputs_of_other_lengths_are_refused():
    reward = load_reward("format_ends")
    with pytest.raises(ValueError, match="'finished' has 1 entries for 2 completions"):
        reward(["p", "q"], ["a", "b"], {}, [[1], [2]], [True])
    with pytest.raises(ValueError, match="column 'finished' clashes with a reward keyword"):
        reward(["p"], ["a"], {"finished": [True]}, [[1]], [True])


# ----------------------------------------------------------------------------- weights, None
def _sometimes_none(completions, **kwargs):
    return [None if i % 3 == 0 else float(i) for i in range(len(completions))]


def _digits(completions, **kwargs):
    return [float(c.isdigit()) if i % 3 != 1 else None for i, c in enumerate(completions)]


def test_weighted_nansum_and_none():
    prompts, completions, columns, ids, finished = _batch(6)
    rewards = RewardSet([Reward(_sometimes_none, weight=0.5), Reward(_digits, weight=-2.0),
                         load_reward("length", weight=0.1)])
    total, per = rewards(prompts, completions, columns, ids, finished)
    assert list(per) == ["_sometimes_none", "_digits", "length"]
    assert np.isnan(per["_sometimes_none"][[0, 3]]).all() and np.isnan(per["_digits"][[1, 4]]).all()
    for i in range(6):
        a = 0.0 if i % 3 == 0 else 0.5 * i
        b = 0.0 if i % 3 == 1 else -2.0 * float(completions[i].isdigit())
        assert total[i] == pytest.approx(a + b + 0.1 * len(ids[i]), rel=1e-6), i
    assert total.dtype == np.float32 and total.shape == (6,)


def test_a_completion_no_reward_scores_is_an_error():
    prompts, completions, columns, ids, finished = _batch(6)
    with pytest.raises(RewardError) as info:
        RewardSet([Reward(_sometimes_none), Reward(lambda completions: [None, 1.0, 1.0, 1.0, 1.0,
                                                                        1.0], name="g")])(
            prompts, completions, columns, ids, finished)
    assert str(info.value) == ("every reward ['_sometimes_none', 'g'] returned None for "
                               "completion 0 (prompt '00+01='); at least one must score it")


@pytest.mark.slow  # imports TRL and transformers (about 15 s on a busy CPU)
def test_total_equals_trls_weighting():
    """TRL's own `GRPOTrainer._calculate_rewards` gives the per-function values (None -> NaN)
    on a stand-in trainer; the total is TRL's formula from `_generate_and_score_completions`,
    `(rewards_per_func * reward_weights.unsqueeze(0)).nansum(dim=1)`, replicated here because
    it sits inside that long method."""
    torch = pytest.importorskip("torch")
    grpo = pytest.importorskip("trl.trainer.grpo_trainer")

    def exact(completions, answer, finished, **kwargs):
        return [1.0 if f and c == f"{a:02d}" else 0.0
                for c, a, f in zip(completions, answer, finished)]

    def long_ids(completion_ids, **kwargs):
        return [float(len(x)) if len(x) > 1 else None for x in completion_ids]

    funcs, weights = [exact, long_ids, _sometimes_none], [1.0, -0.25, 0.75]
    prompts, completions, columns, ids, finished = _batch(7)
    fake = types.SimpleNamespace(
        accelerator=types.SimpleNamespace(device="cpu", is_main_process=True),
        reward_funcs=funcs, reward_processing_classes=[None] * 3,
        reward_func_names=[f.__name__ for f in funcs], state=types.SimpleNamespace(global_step=0),
        args=types.SimpleNamespace(report_to=[]), _log_completion_extra=None, _log_metric=None,
        environments=None)
    inputs = [{"prompt": p, "finished": f, **{k: v[i] for k, v in columns.items()}}
              for i, (p, f) in enumerate(zip(prompts, finished))]
    per_func = grpo.GRPOTrainer._calculate_rewards(fake, inputs, prompts, completions, ids)
    trl_total = (per_func * torch.tensor(weights).unsqueeze(0)).nansum(dim=1)

    ours = RewardSet([Reward(f, weight=w) for f, w in zip(funcs, weights)])
    total, per = ours(prompts, completions, columns, ids, finished)
    np.testing.assert_array_equal(np.stack(list(per.values()), axis=1), per_func.numpy())
    np.testing.assert_allclose(total, trl_total.numpy(), rtol=1e-6, atol=0)
    assert np.isnan(per_func.numpy()).any() and not np.isnan(total).any()


def test_same_names_get_suffixes():
    f = load_reward("format_ends")
    names = RewardSet([f, load_reward("length"), f, Reward(f.fn, "format_ends_1")]).names
    assert names == ["format_ends_2", "length", "format_ends_3", "format_ends_1"]
    assert RewardSet([f, f]).names == ["format_ends_1", "format_ends_2"]
    assert f.name == "format_ends"  # the caller's Reward is not renamed


def test_reward_set_needs_rewards():
    with pytest.raises(ValueError, match="no rewards given"):
        RewardSet([])
    with pytest.raises(ValueError, match="item 0 is a str, not a Reward"):
        RewardSet(["exact_match"])


# ----------------------------------------------------------------------------- config lists
def test_config_list():
    rs = reward_set_from_config(["exact_match", {"reward": "length", "weight": -0.5},
                                 {"reward": "format_ends"}])
    assert rs.names == ["exact_match", "length", "format_ends"]
    assert rs.weights.tolist() == [1.0, -0.5, 1.0]


@pytest.mark.parametrize("items, message", [
    ([], "rewards is empty; name at least one reward"),
    ("exact_match", "rewards must be a list of rewards; got str"),
    ([{"reward": "length", "wieght": 2}],
     "rewards[0]: unknown key 'wieght'; allowed keys: ['reward', 'weight']"),
    (["length", {"weight": 2}], "rewards[1]: no 'reward' key; allowed keys: ['reward', 'weight']"),
    ([{"reward": "length", "weight": "heavy"}],
     "rewards[0]: weight must be a finite number; got 'heavy'"),
    ([{"reward": "length", "weight": math.nan}], "rewards[0]: weight must be a finite number"),
    ([3], "rewards[0]: expected a reward spec or {reward: SPEC, weight: W}, got int"),
    (["exakt"], "unknown reward 'exakt': not a built-in reward"),
])
def test_config_list_errors(items, message):
    with pytest.raises(ValueError) as info:
        reward_set_from_config(items)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


# ----------------------------------------------------------------------------- file specs
def test_function_from_a_file_relative_to_the_cwd(tmp_path, monkeypatch):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "r.py").write_text(
        "import dataclasses\n\n@dataclasses.dataclass\nclass Box:\n    x: int = 1\n\n"
        "def has_box(completions, **kwargs):\n    return [float('box' in c) for c in completions]\n"
        "NOT_A_FUNCTION = 3\n")
    monkeypatch.chdir(tmp_path)
    reward = load_reward("mine/r.py:has_box", weight=2.0)
    assert (reward.name, reward.weight) == ("has_box", 2.0)
    assert reward(["p", "p"], ["a box", "none"]).tolist() == [1.0, 0.0]


@pytest.mark.parametrize("source, spec, message", [
    (None, "nope.py:f", "reward 'nope.py:f': nope.py does not exist (relative to the current "
                        "directory"),
    ("def f(completions):\n    return []\n", "r.py:g", "reward 'r.py:g': r.py defines no 'g'; "
                                                       "its functions: ['f']"),
    ("f = 3\n", "r.py:f", "reward 'r.py:f': 'f' in r.py is a int, not a function"),
    ("def f(:\n", "r.py:f", "reward 'r.py:f': importing r.py raised SyntaxError: "),
    ("raise RuntimeError('no GPU')\n", "r.py:f",
     "reward 'r.py:f': importing r.py raised RuntimeError: no GPU"),
    ("import sys\nsys.exit(1)\n", "r.py:f", "reward 'r.py:f': importing r.py raised SystemExit"),
    ("def f(completions):\n    return []\n", "r.py:2f", "reward 'r.py:2f': '2f' is not a "
                                                         "function name"),
    ("def f(completions):\n    return []\n", "r.py", "unknown reward 'r.py': not a built-in "),
])
def test_file_spec_errors(tmp_path, monkeypatch, source, spec, message):
    if source is not None:
        (tmp_path / "r.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as info:
        load_reward(spec)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)
    if spec == "r.py":
        assert str(info.value).endswith("; name the function: r.py:function_name")


def test_positional_only_functions_are_refused():
    with pytest.raises(ValueError, match="takes positional-only parameter 'completions'"):
        Reward(lambda completions, /: [], name="f")


# ----------------------------------------------------------------------------- reward models
PAIRS = [{"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1)}
         for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 9), (4, 4), (6, 1), (8, 3), (9, 9),
                      (0, 5), (2, 2), (7, 1)]]


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory):
    from tests.helpers import load_recipe, sets

    tmp = tmp_path_factory.mktemp("rm")
    (tmp / "pairs.json").write_text(json.dumps(PAIRS))
    (tmp / "reward.yaml").write_text("seed: 0\n")  # the recipe's defaults, set below
    code = load_recipe("reward").main([
        "--config", str(tmp / "reward.yaml"), *sets(
            "model.preset=gpt_nano", "model.args={num_layers: 1}", "model.init_from=null",
            "model.tokenizer=byte", "data.template=plain", "data.max_length=64",
            "data.validation_fraction=0.5", f"data.path={tmp / 'pairs.json'}",
            "train.epochs=1", "train.batch_size=4", "train.verbose=0",
            "train.jit_compile=false", f"run_dir={tmp / 'rm_run'}")])
    assert code == 0
    return tmp / "rm_run"


def _direct_scores(run, rows):
    """RewardModel.score on rows built here, right padded to the run's max_length."""
    import keras

    import kzoo  # noqa: F401

    model = keras.models.load_model(run / "model.keras", compile=False)
    ids = np.zeros((len(rows), 64), np.int32) + 256  # ByteTokenizer's end-of-text id pads
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
    lengths = np.array([len(r) for r in rows], np.int32)
    return keras.ops.convert_to_numpy(model.score(ids, lengths))


@pytest.mark.slow  # trains a tiny reward model once per module
def test_reward_model_scores_equal_rewardmodel_score(reward_run):
    from kzoo.tokenizers import ByteTokenizer

    reward = load_reward(str(reward_run), policy_tokenizer=ByteTokenizer(), weight=0.5)
    assert (reward.name, reward.weight) == ("rm_run", 0.5)
    reward.fn.batch_size = 3  # several batches of unequal longest rows
    prompts = ["1+2=", "3+4=", "12+30=", "5+6=", "9+9=", "1+1="]
    completions = ["3", "8", "42", "11", "a much longer wrong answer", ""]
    got = reward(prompts, completions, {}, [[0]] * 6, [True] * 6)
    # the plain template's layout: "{prompt}\n", the completion, end-of-text
    rows = [[*(p + "\n").encode(), *c.encode(), 256] for p, c in zip(prompts, completions)]
    want = _direct_scores(reward_run, rows)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert got.dtype == np.float32 and len(set(np.round(got, 5))) > 1


@pytest.mark.slow  # trains a tiny reward model once per module
def test_reward_model_scores_conversational_prompts(reward_run):
    from kzoo.data.conversation import encode_conversation
    from kzoo.tokenizers import ByteTokenizer

    reward = load_reward(str(reward_run))
    prompts = [[{"role": "user", "content": "1+2="}],
               [{"role": "system", "content": "Add."}, {"role": "user", "content": "3+4="}]]
    completions = ["3", [{"role": "assistant", "content": "7"}]]
    got = reward(prompts, completions, {}, [[0], [0]], [True, True])
    rows = [encode_conversation(p + [{"role": "assistant", "content": c}], ByteTokenizer(),
                                len(p))[0][:64].tolist() for p, c in zip(prompts, ["3", "7"])]
    np.testing.assert_allclose(got, _direct_scores(reward_run, rows), rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # trains a tiny reward model once per module
def test_reward_model_refuses_too_long_prompt_and_mixed_forms(reward_run):
    reward = load_reward(str(reward_run))
    with pytest.raises(RewardError, match=r"raised ValueError: reward model .*rm_run: "
                                          r"completion 1: the prompt has 71 tokens"):
        reward(["1+2=", "x" * 70], ["3", "4"])
    with pytest.raises(RewardError, match="completion 0 is a list of messages but its prompt"):
        reward(["1+2="], [[{"role": "assistant", "content": "3"}]])


@pytest.mark.slow  # trains a tiny reward model once per module
def test_reward_model_tokenizer_must_be_the_policys(reward_run):
    from kzoo.tokenizers import CharTokenizer

    with pytest.raises(ValueError) as info:
        load_reward(str(reward_run), policy_tokenizer=CharTokenizer("0123456789+="))
    message = str(info.value)
    assert message.startswith(f"reward model {reward_run}: its tokenizer (byte, vocab_size=257, "
                              "fingerprint ")
    assert "does not match the policy's (char, vocab_size=" in message and "\n" not in message


def test_tokenizer_fingerprint_sees_the_vocabulary():
    from kzoo.alignment.reward_scoring import tokenizer_fingerprint
    from kzoo.tokenizers import ByteTokenizer, CharTokenizer

    assert tokenizer_fingerprint(CharTokenizer("ab")) == tokenizer_fingerprint(CharTokenizer("ab"))
    assert tokenizer_fingerprint(CharTokenizer("ab")) != tokenizer_fingerprint(CharTokenizer("ac"))
    assert tokenizer_fingerprint(ByteTokenizer()) == tokenizer_fingerprint(ByteTokenizer())


@pytest.mark.slow  # trains a tiny reward model once per module
def test_folders_that_are_not_reward_runs(tmp_path, reward_run):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ValueError, match="is a folder but not a kzoo run folder"):
        load_reward(str(plain))
    sft = tmp_path / "sft"
    sft.mkdir()
    (sft / "kzoo-run.json").write_text(json.dumps({"recipe": "sft", "status": "finished"}))
    with pytest.raises(ValueError, match="made by the sft recipe, not the reward recipe"):
        load_reward(str(sft))
    half = tmp_path / "half"
    half.mkdir()
    for name in ("kzoo-run.json", "config.yaml"):
        (half / name).write_bytes((reward_run / name).read_bytes())
    with pytest.raises(ValueError, match="reward-model run folder has no tokenizer"):
        load_reward(str(half))
    os.symlink(reward_run / "tokenizer", half / "tokenizer")
    with pytest.raises(ValueError, match="reward-model run folder has no model.keras"):
        load_reward(str(half))
