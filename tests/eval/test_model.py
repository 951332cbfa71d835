"""KzooLM's pieces against plain computations: the bucketed scorer, left truncation, rolling
windows, stop strings, sampling and chat templates."""

import logging

import numpy as np
import pytest
from keras import ops

from kzoo import backend
from tests.eval.conftest import CONTEXT


@pytest.fixture(scope="module")
def lm(tiny):
    from kzoo.eval import KzooLM

    return KzooLM(model=tiny["model"], tokenizer=tiny["tokenizer"], batch_size=3)


def _logprobs(model, ids):
    logits = np.asarray(ops.convert_to_numpy(model(np.array([ids], "int32"))))[0]
    logits = logits.astype(np.float64)
    return logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                                                              keepdims=True)) \
        - logits.max(-1, keepdims=True)


def _expected(model, context, continuation):
    full = (context + continuation)[-(CONTEXT + 1):]
    logp = _logprobs(model, full[:-1])
    n = len(continuation)
    rows = range(len(full) - 1 - n, len(full) - 1)
    picked = [logp[r, full[r + 1]] for r in rows]
    return sum(picked), all(logp[r].argmax() == full[r + 1] for r in rows)


def test_scorer_matches_the_model_and_compiles_once_per_bucket(lm, tiny):
    rng = np.random.default_rng(0)
    requests = [(rng.integers(1, 300, n).tolist(), rng.integers(1, 300, m).tolist())
                for n, m in [(3, 1), (5, 4), (9, 2), (2, 7), (20, 3), (30, 1), (11, 11)]]
    # choices of one question: one-token answers share a row, as does a longer answer's prefix
    question = rng.integers(1, 300, 12).tolist()
    requests += [(question, [a]) for a in (7, 8, 9)] + [(question[:-1], question[-1:] + [9])]
    before = lm.scorer.trace_count
    got = lm.scorer.score(requests)
    for (context, continuation), (logp, greedy) in zip(requests, got):
        want, want_greedy = _expected(tiny["model"], context, continuation)
        assert abs(logp - want) < 1e-4 and greedy == want_greedy
    # lengths 4..22 fall in the 16 and 32 buckets: two programs, none more on a second call
    # (PyTorch runs eagerly and traces nothing: its counter says only that it ran)
    traces = 2 if backend.name() != "torch" else min(2, 1 - before)
    assert lm.scorer.trace_count - before == traces
    lm.scorer.score(list(reversed(requests)))
    assert lm.scorer.trace_count - before == traces


def test_greedy_flag_is_true_for_the_argmax_continuation(lm, tiny):
    context = [5, 6, 7, 8]
    best = int(_logprobs(tiny["model"], context)[-1].argmax())
    assert lm.scorer.score([(context, [best])])[0][1] is True
    assert lm.scorer.score([(context, [(best + 1) % 300])])[0][1] is False


def test_long_requests_are_cut_from_the_left_with_one_warning(tiny, caplog):
    from kzoo.eval import KzooLM

    fresh = KzooLM(model=tiny["model"], tokenizer=tiny["tokenizer"], batch_size=2)
    rng = np.random.default_rng(1)
    long = [(rng.integers(1, 300, 90).tolist(), rng.integers(1, 300, 5).tolist())
            for _ in range(3)]
    with caplog.at_level(logging.WARNING, logger="kzoo.eval"):
        got = fresh.scorer.score(long)
    warnings = [r for r in caplog.records if "longer than the model's context" in r.message]
    assert len(warnings) == 1 and "cut" in warnings[0].message
    for (context, continuation), (logp, _) in zip(long, got):
        assert abs(logp - _expected(tiny["model"], context, continuation)[0]) < 1e-4
        cut = context[-(CONTEXT + 1 - len(continuation)):]
        assert abs(logp - _expected(tiny["model"], cut, continuation)[0]) < 1e-4


def test_a_continuation_longer_than_the_context_is_scored_in_pieces(tiny, caplog):
    from kzoo.eval import KzooLM

    fresh = KzooLM(model=tiny["model"], tokenizer=tiny["tokenizer"], batch_size=2)
    rng = np.random.default_rng(2)
    context, continuation = rng.integers(1, 300, 10).tolist(), rng.integers(1, 300, 150).tolist()
    short = (rng.integers(1, 300, 6).tolist(), rng.integers(1, 300, 3).tolist())
    ticks = []
    with caplog.at_level(logging.WARNING, logger="kzoo.eval"):
        got = fresh.scorer.score([(context, continuation), short], progress=ticks.append)
    # 150 tokens = pieces of 64, 64 and 22, each predicted after the tokens before it
    want = sum(_expected(tiny["model"], context + continuation[:start],
                         continuation[start:start + CONTEXT])[0] for start in (0, 64, 128))
    assert abs(got[0][0] - want) < 1e-3 and got[0][1] is False
    assert abs(got[1][0] - _expected(tiny["model"], *short)[0]) < 1e-4
    assert sum(ticks) == 2  # requests, not pieces
    said = [r for r in caplog.records if "scored in pieces" in r.message]
    assert len(said) == 1 and "150 tokens" in said[0].message


def test_rolling_loglikelihood_is_the_sum_over_lm_evals_windows(lm, tiny):
    from lm_eval.api.instance import Instance

    short = "The for statement"
    ids = lm.tok_encode(short)
    logp = _logprobs(tiny["model"], [lm.prefix_token_id] + ids[:-1])
    want = sum(logp[i, t] for i, t in enumerate(ids))
    long = "The while statement repeats a block of code. " * 12
    assert len(lm.tok_encode(long)) > 2 * CONTEXT  # several windows
    got = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (short,), 0),
                                    Instance("loglikelihood_rolling", {}, (long,), 1)],
                                   disable_tqdm=True)
    assert abs(got[0] - want) < 1e-4
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
        lm.tok_encode(long), lm.prefix_token_id, CONTEXT, 1)]
    assert len(windows) >= 3
    want = sum(_expected(tiny["model"], context, preds)[0] for context, preds in windows)
    assert abs(got[1] - want) < 1e-3


def test_until_strings_cut_generations_and_sampling_is_seeded(lm):
    from lm_eval.api.instance import Instance

    def generate(context, **kwargs):
        request = Instance("generate_until", {}, (context, {"max_gen_toks": 12, **kwargs}), 0)
        return lm.generate_until([request], disable_tqdm=True)[0]

    free = generate("Question: 3 + 4 =", until=[])
    stop = next(ch for ch in free[2:] if ch.strip())
    assert generate("Question: 3 + 4 =", until=[stop]) == free.split(stop)[0]
    sampled = generate("Question: 3 + 4 =", do_sample=True, temperature=1.0)
    again = generate("Question: 3 + 4 =", do_sample=True, temperature=1.0)
    assert isinstance(sampled, str) and isinstance(again, str)
    with pytest.raises(ValueError, match="max_gen_toks=64 leaves no room"):
        generate("x", max_gen_toks=CONTEXT)


def test_chat_template_matches_transformers(tiny):
    transformers = pytest.importorskip("transformers")
    from kzoo.eval import KzooLM

    lm = KzooLM(pretrained=str(tiny["hf"]), batch_size=2)
    reference = transformers.AutoTokenizer.from_pretrained(tiny["hf"])
    chat = [{"role": "user", "content": "What is 2 + 2?"}]
    assert lm.apply_chat_template(chat) == reference.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True)
    answered = [*chat, {"role": "assistant", "content": "It is"}]
    assert lm.apply_chat_template(answered, add_generation_prompt=False) == \
        reference.apply_chat_template(answered, tokenize=False, continue_final_message=True)
    assert lm.chat_template(True) == reference.chat_template
    assert lm.tokenizer_name.endswith("hf")


def test_bad_model_args_are_one_line(tiny, tmp_path):
    from kzoo.eval import KzooLM

    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        KzooLM(pretrained=str(tiny["hf"]), batch_size="zero")
    with pytest.raises(ValueError, match="is a run model, evaluated in its saved dtype"):
        KzooLM(pretrained=str(tiny["run"]), dtype="bfloat16")
    with pytest.raises(ValueError, match="does not exist"):
        KzooLM(pretrained=str(tmp_path / "nothing"))
