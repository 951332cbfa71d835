"""lm-eval's `local-completions` model against `kzoo serve` gives the log-likelihoods of the
in-process kzoo lm-eval model (`kzoo.eval.KzooLM`) on the same weights. It tokenizes through
the server's vLLM-style /tokenize (its "remote" tokenizer backend): nothing is downloaded."""

import pytest

pytest.importorskip("tenacity")  # lm-eval's API models need it (the dev extra has it)


def test_local_completions_matches_the_in_process_model(served, nano):
    from lm_eval.api.instance import Instance
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from kzoo.eval import KzooLM

    model, tokenizer, _ = nano
    pairs = [("The capital of France is", " Paris"), ("2 + 2 =", " 4"),
             ("Once upon a time", " there was a cat"), ("a", "b")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    remote = LocalCompletionsAPI(base_url=served.url + "/v1/completions", model="gpt-nano",
                                 tokenizer_backend="remote", tokenized_requests=True,
                                 max_length=120, num_concurrent=1, max_retries=1)
    served_answers = remote.loglikelihood(requests, disable_tqdm=True)
    local = KzooLM(model=model, tokenizer=tokenizer, batch_size=4)
    local_answers = local.loglikelihood(requests, disable_tqdm=True)
    assert len(served_answers) == len(pairs) and all(lp < 0 for lp, _ in served_answers)
    for (got, got_greedy), (want, want_greedy) in zip(served_answers, local_answers):
        assert got == pytest.approx(want, abs=1e-4)
        assert got_greedy == want_greedy
