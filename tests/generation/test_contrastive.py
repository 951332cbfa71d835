"""Contrastive search (`kzoo.generation.contrastive`): the same tokens as keras-hub's
`ContrastiveSampler` on the same weights, every step against an uncached reference written
from the paper's formula, alpha 0 is greedy, ragged batches, stops, log-probs, streaming, one
program per bucket, the sampler's config, bad input, and the commands' flags."""

import io
import re
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

from kzoo import samplers
from kzoo.cli import chat as chat_lib
from kzoo.generation import Generator, generate
from kzoo.models import CausalLM
from kzoo.recipes import generate as recipe
from kzoo.tokenizers import ByteTokenizer

PROMPTS = [[5, 6, 7, 5, 6], [8, 9], [20, 3, 4]]
# What is generated, not compilation: plain TF graphs trace faster than XLA compiles; eager JAX
# dispatches op by op, slower than one XLA program.
GRAPH = {"jit_compile": keras.backend.backend() == "jax"}


def _peaked(model, factor=3.0):
    """Random weights times `factor`: peaked next-token distributions, so that both terms of
    the score matter (at the initial scale p is nearly flat and the penalty decides alone)."""
    for v in model.weights:
        if "embedding" in v.path or "kernel" in v.path:
            v.assign(ops.convert_to_numpy(v) * factor)
    return model


@pytest.fixture(scope="module")
def gpt():
    keras.utils.set_random_seed(0)
    return _peaked(CausalLM.from_preset("gpt_nano", vocab_size=48, max_sequence_length=64))


@pytest.fixture(scope="module")
def llama():
    keras.utils.set_random_seed(1)
    return _peaked(CausalLM.from_preset("llama_nano", vocab_size=48, max_sequence_length=64))


def _contrastive(model, alpha, k, prompts=PROMPTS, n=12, **kwargs):
    sampler = samplers.get("contrastive", penalty_alpha=alpha, top_k=k)
    generator = Generator(model, sampler, **{**GRAPH, **kwargs.pop("generator", {})})
    return generator.generate(prompts, max_new_tokens=n, return_logprobs=True, **kwargs)


def _reference(model, prompt, steps, alpha, k):
    """Contrastive search without a cache, from the paper's formula: each step one uncached
    forward of the text and one of the k candidate continuations (right-padded to one width,
    see `tests.generation.reference`). Returns `(tokens, log-probs)`."""
    width = model.max_sequence_length
    seq, tokens, logprobs = list(prompt), [], []

    def hidden_and_logits(rows):
        ids = np.zeros((len(rows), width), "int32")  # (rows, width): the rows, then id 0
        for r, row in enumerate(rows):
            ids[r, :len(row)] = row
        hidden = model.hidden_states(ids)  # (rows, width, H)
        return (ops.convert_to_numpy(hidden).astype("float64"),
                ops.convert_to_numpy(model.logits(hidden)).astype("float64"))

    for _ in range(steps):
        hidden, logits = hidden_and_logits([seq])
        context, logits = hidden[0, :len(seq)], logits[0, len(seq) - 1]  # (n, H), (V,)
        log_p = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
        p = np.exp(log_p)
        candidates = np.argsort(-p, kind="stable")[:k]
        cand_hidden, _ = hidden_and_logits([seq + [int(c)] for c in candidates])
        cand_hidden = cand_hidden[np.arange(k), len(seq)]  # (k, H) each at its own position
        cosine = (cand_hidden @ context.T) / (
            np.linalg.norm(cand_hidden, axis=1)[:, None] * np.linalg.norm(context, axis=1))
        score = (1 - alpha) * p[candidates] - alpha * cosine.max(axis=1)
        token = int(candidates[int(np.argmax(score))])
        tokens.append(token)
        logprobs.append(float(log_p[token]))
        seq.append(token)
    return tokens, logprobs


def _keras_hub_tokens(model, sampler, prompts, n):
    """keras-hub's `GPT2CausalLM` with `model`'s weights, compiled with `sampler`: the first n
    new tokens of each right-padded row."""
    keras_hub = pytest.importorskip("keras_hub")
    hub = keras_hub.models.GPT2CausalLM(backbone=model.to_keras_hub(), preprocessor=None)
    width = max(map(len, prompts)) + n  # every row gets at least n new slots
    ids = np.zeros((len(prompts), width), "int32")  # (batch, width) right-padded
    mask = np.zeros_like(ids, bool)
    for r, prompt in enumerate(prompts):
        ids[r, :len(prompt)], mask[r, :len(prompt)] = prompt, True
    hub.compile(sampler=sampler)
    out = np.asarray(hub.generate({"token_ids": ids, "padding_mask": mask},
                                  stop_token_ids=None)["token_ids"])
    return [out[r, len(p):len(p) + n].tolist() for r, p in enumerate(prompts)]


@pytest.mark.parametrize("alpha, k", [(0.6, 4), (0.3, 3)])
def test_same_tokens_as_keras_hub_on_a_ragged_batch(gpt, alpha, k):
    keras_hub = pytest.importorskip("keras_hub")
    theirs = _keras_hub_tokens(gpt, keras_hub.samplers.ContrastiveSampler(k=k, alpha=alpha),
                               PROMPTS, 12)
    ours = _contrastive(gpt, alpha, k)
    assert ours.token_ids == theirs
    # keras-hub's sampler handed to kzoo's generator runs kzoo's search
    hubs = Generator(gpt, keras_hub.samplers.ContrastiveSampler(k=k, alpha=alpha), **GRAPH)
    assert hubs.generate(PROMPTS, 12).token_ids == theirs
    # Not greedy in disguise: the penalty changed tokens.
    assert ours.token_ids != Generator(gpt, **GRAPH).generate(PROMPTS, 12).token_ids


def test_kzoo_sampler_runs_keras_hubs_loop_with_the_same_tokens(gpt):
    """In keras-hub's protocol the kzoo sampler runs keras-hub's own contrastive loop."""
    sampler = samplers.get("contrastive", penalty_alpha=0.6, top_k=4)
    assert _keras_hub_tokens(gpt, sampler, PROMPTS, 8) == _contrastive(gpt, 0.6, 4,
                                                                       n=8).token_ids


@pytest.mark.parametrize("family, weights", [("gpt", None), ("llama", "reference")])
def test_every_step_matches_the_uncached_reference(family, weights, request):
    model = request.getfixturevalue(family)
    result = _contrastive(model, 0.5, 3, n=8, generator={"weights": weights})
    for prompt, tokens, logprobs in zip(PROMPTS, result.token_ids, result.logprobs):
        expected_tokens, expected_logprobs = _reference(model, prompt, 8, 0.5, 3)
        assert tokens == expected_tokens
        np.testing.assert_allclose(logprobs, expected_logprobs, atol=1e-4)


def test_alpha_zero_is_greedy(llama):
    greedy = Generator(llama, **GRAPH).generate(PROMPTS, 12, return_logprobs=True)
    result = _contrastive(llama, 0.0, 4)
    assert result.token_ids == greedy.token_ids
    for ours, theirs in zip(result.logprobs, greedy.logprobs):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
    # and top_k=1 leaves one candidate, whatever alpha
    assert _contrastive(llama, 0.9, 1).token_ids == greedy.token_ids


def test_rows_do_not_depend_on_their_batch(gpt):
    batched = _contrastive(gpt, 0.6, 4).token_ids
    alone = [_contrastive(gpt, 0.6, 4, prompts=[p]).token_ids[0] for p in PROMPTS]
    assert batched == alone


def test_stops_end_rows_where_they_occur(gpt):
    full = _contrastive(gpt, 0.6, 4).token_ids
    stop_token, sequence = full[1][4], full[2][3:5]
    result = _contrastive(gpt, 0.6, 4, stop_token_ids=[stop_token], stop_sequences=[sequence])
    for row, tokens in enumerate(full):
        cut = next((j for j in range(len(tokens)) if tokens[j] == stop_token
                    or tokens[max(0, j - 1):j + 1] == sequence), None)
        if cut is None:
            assert result.token_ids[row] == tokens and result.finish_reasons[row] == "length"
        else:
            drop = 1 if tokens[cut] == stop_token else 2
            assert result.token_ids[row] == tokens[:cut + 1 - drop]
            assert result.finish_reasons[row] == "stop"
        assert len(result.logprobs[row]) == len(result.token_ids[row])
    assert result.finish_reasons[1] == "stop"


def test_stream_yields_what_generate_returns(gpt):
    sampler = samplers.get("contrastive", penalty_alpha=0.6, top_k=4)
    generator = Generator(gpt, sampler, **GRAPH)
    expected = generator.generate([PROMPTS[0]], max_new_tokens=10).token_ids[0]
    assert list(generator.stream(PROMPTS[0], max_new_tokens=10)) == expected
    stop = expected[6]
    streamed = list(generator.stream(PROMPTS[0], max_new_tokens=10, stop_token_ids=[stop]))
    assert streamed == expected[:expected.index(stop)]


def test_one_program_per_bucket_and_a_saved_config(gpt):
    sampler = samplers.get("contrastive", penalty_alpha=0.6, top_k=4)
    generator = Generator(gpt, sampler, **GRAPH)
    generator.generate([[1, 2, 3]], max_new_tokens=5)
    traces = generator.trace_count
    generator.generate([[4, 5]], max_new_tokens=7)  # same bucket: P = 4, N = 8
    assert generator.trace_count == traces
    config = samplers.serialize(sampler)
    again = samplers.deserialize(config)
    assert (again.penalty_alpha, again.k) == (0.6, 4)
    assert "temperature" not in again.get_config()
    by_config = generate(gpt, PROMPTS, 6, sampler=config, **GRAPH).token_ids
    assert by_config == _contrastive(gpt, 0.6, 4, n=6).token_ids
    assert ops.convert_to_numpy(sampler(np.array([[0.1, 2.0, 0.3, 1.0, -1.0]]))).tolist() == \
        [[1, 3, 2, 0]]  # as a layer: the candidates, most likely first


@pytest.mark.parametrize("make, message", [
    (lambda m: samplers.get("contrastive", penalty_alpha=1.5),
     r"`penalty_alpha` must be in \[0, 1\] \(0 is greedy decoding\)\. Received: "
     r"penalty_alpha=1\.5"),
    (lambda m: samplers.get("contrastive", penalty_alpha=-0.1), r"penalty_alpha=-0\.1"),
    (lambda m: samplers.get("contrastive", penalty_alpha="a"), r"must be a number"),
    (lambda m: samplers.get("contrastive", top_k=0), r"`top_k` must be a positive integer"),
    (lambda m: Generator(m, samplers.get("contrastive", top_k=49)),
     r"`top_k`=49 exceeds the model's vocab_size=48"),
    (lambda m: Generator(m, "contrastive", draft="prompt_lookup"),
     r"does not combine with draft tokens .*combines with ragged batches"),
    (lambda m: samplers.get("contrastive", num_beams=2), r"got num_beams .*not with beam search"),
    (lambda m: samplers.get("contrastive", temperature=0.7), r"takes penalty_alpha and top_k; "
     r"got temperature"),
])
def test_bad_input_gets_one_clear_line(gpt, make, message):
    with pytest.raises(ValueError, match=message) as error:
        make(gpt)
    assert "\n" not in str(error.value)


def test_the_guides_example_runs():
    text = Path(__file__).parents[2].joinpath("docs", "generation.md").read_text()
    section = text.split("## Contrastive search", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "docs/generation.md", "exec"), {})


# ----------------------------------------------------------------------------- commands
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("contrastive")
    keras.utils.set_random_seed(0)
    CausalLM.from_preset("gpt_nano", vocab_size=257, max_sequence_length=64).save(
        root / "model.keras")
    ByteTokenizer().save(root / "tokenizer")
    return root


def test_generate_command_gives_the_generators_text(run_dir):
    argv = [str(run_dir), "--prompt", "abcab", "--sampler", "contrastive", "--penalty-alpha",
            "0.6", "--top-k", "3", "--max-new-tokens", "10", "--no-stop-at-eot"]
    text = recipe.run(recipe.resolve_options(recipe.parse_args(argv)), out=io.StringIO())["text"]
    model, tokenizer = recipe.load_run(str(run_dir))
    sampler = samplers.get("contrastive", penalty_alpha=0.6, top_k=3)
    assert text == Generator(model, sampler, tokenizer).generate("abcab", 10).texts[0]
    args = chat_lib.parse_args([str(run_dir), "--sampler", "contrastive", "--penalty-alpha",
                                "0.6", "--top-k", "3"])
    model, tokenizer, fmt = chat_lib.load(args)
    settings = {k: v for k, v in vars(args).items() if k in chat_lib.SETTABLE}
    chat = chat_lib.Chat(model, tokenizer, fmt, {**settings, "max_new_tokens": 6})
    assert chat.sampler.penalty_alpha == 0.6 and chat.sampler.k == 3
    assert chat.reply("ab", io.StringIO())


@pytest.mark.parametrize("flags, message", [
    (["--sampler", "contrastive", "--penalty-alpha", "1.5"], "penalty_alpha=1.5"),
    (["--sampler", "contrastive", "--top-k", "0"], "`top_k` must be a positive integer"),
    (["--penalty-alpha", "0.5"], "use --sampler contrastive"),
    (["--sampler", "contrastive", "--prompt-lookup", "2"], "does not combine with draft"),
    (["--sampler", "contrastive", "--num-beams", "2"], "--num-beams does not combine with "
                                                       "--sampler contrastive"),
    (["--sampler", "contrastive", "--temperature", "0.7"], "got temperature"),
])
def test_generate_command_refuses_bad_input_in_one_line(run_dir, flags, message, capsys):
    assert recipe.main([str(run_dir), "--prompt", "ab", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("flags, message", [
    (["--sampler", "contrastive", "--penalty-alpha", "-1"], "penalty_alpha=-1.0"),
    (["--sampler", "contrastive", "--prompt-lookup", "2"], "does not combine with draft"),
])
def test_chat_refuses_bad_input_in_one_line(run_dir, flags, message, capsys):
    assert chat_lib.main([str(run_dir), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
