"""kzoo's lm-eval model against lm-eval's own `hf` model on the same weights (a `save_hf`
folder): every request of the shipped tasks gets the same answer."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

TASKS = ["kzoo_arith_mc", "kzoo_arith_gen", "kzoo_pydocs_ppl"]


@pytest.fixture(scope="module")
def both(tiny):
    import lm_eval

    from kzoo.eval import KzooLM, task_manager

    torch.set_num_threads(1)
    manager = task_manager()
    runs = {}
    for name, model in (("kzoo", KzooLM(pretrained=str(tiny["hf"]), batch_size=4)),
                        ("hf", "hf")):
        runs[name] = lm_eval.simple_evaluate(
            model=model, model_args=f"pretrained={tiny['hf']},dtype=float32",
            batch_size=4, device="cpu", tasks=TASKS, limit=12, task_manager=manager,
            log_samples=True)
    return runs


def _responses(run, task):
    return [s["resps"] for s in run["samples"][task]]


def test_loglikelihoods_and_greedy_flags_match_hf(both):
    ours, theirs = (_responses(both[k], "kzoo_arith_mc") for k in ("kzoo", "hf"))
    a = np.array([[r[0][0] for r in doc] for doc in ours])
    b = np.array([[r[0][0] for r in doc] for doc in theirs])
    assert a.shape == (12, 4) and np.abs(a - b).max() < 1e-4
    assert a.std() > 0.1  # not vacuous: the choices' scores differ
    assert [[r[0][1] for r in doc] for doc in ours] == [[r[0][1] for r in doc] for doc in theirs]
    for metric in ("acc,none", "acc_norm,none", "acc_centered,none"):
        assert both["kzoo"]["results"]["kzoo_arith_mc"][metric] == \
            both["hf"]["results"]["kzoo_arith_mc"][metric]


def test_rolling_loglikelihoods_match_hf(both):
    ours, theirs = (np.array([doc[0][0] for doc in _responses(both[k], "kzoo_pydocs_ppl")])
                    for k in ("kzoo", "hf"))
    # sums over hundreds of tokens in several 64-token windows: float32 rounding grows with them
    assert len(ours) == 12 and np.abs(ours - theirs).max() < 1e-4 * np.abs(theirs).max()
    assert np.abs(ours - theirs).max() < 2e-3
    for metric in ("bits_per_byte,none", "byte_perplexity,none"):
        ours, theirs = (both[k]["results"]["kzoo_pydocs_ppl"][metric] for k in ("kzoo", "hf"))
        assert abs(ours - theirs) < 1e-6 * theirs


def test_greedy_generations_are_identical(both):
    ours, theirs = (_responses(both[k], "kzoo_arith_gen") for k in ("kzoo", "hf"))
    assert ours == theirs
    assert len({doc[0][0] for doc in ours}) > 1  # not vacuous: the answers differ
    assert both["kzoo"]["results"]["kzoo_arith_gen"]["exact_match,none"] == \
        both["hf"]["results"]["kzoo_arith_gen"]["exact_match,none"]
