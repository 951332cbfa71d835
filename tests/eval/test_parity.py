"""kzoo's lm-eval model against lm-eval's own `hf` model on the same weights (a `save_hf`
folder): every request of the shipped tasks gets the same answer."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

TASKS = ["kzoo_arith_mc", "kzoo_arith_gen", "kzoo_pydocs_ppl"]


DERIVED = ["kzoo_shakespeare_mc", "kzoo_instruct_ll", "kzoo_sums_gen"]


def _both(folder, tasks, metadata=None):
    import lm_eval

    from kzoo.eval import KzooLM, task_manager

    torch.set_num_threads(1)
    manager = task_manager(metadata=metadata)
    runs = {}
    for name, model in (("kzoo", KzooLM(pretrained=str(folder), batch_size=4)),
                        ("hf", "hf")):
        runs[name] = lm_eval.simple_evaluate(
            model=model, model_args=f"pretrained={folder},dtype=float32",
            batch_size=4, device="cpu", tasks=tasks, limit=12, task_manager=manager,
            log_samples=True)
    return runs


@pytest.fixture(scope="module")
def both(tiny):
    return _both(tiny["hf"], TASKS)


@pytest.fixture(scope="module")
def derived_both(tiny, tmp_path_factory):
    """The tiny model with a context that holds the instruction records whole (lm-eval's hf
    model has no answer for a continuation longer than its context)."""
    import keras

    from kzoo.models import CausalLM
    from tests.conftest import shared_data_file

    keras.utils.set_random_seed(4)
    model = CausalLM.from_preset("gpt_nano", vocab_size=tiny["tokenizer"].vocab_size,
                                 max_sequence_length=512, initializer_range=0.3)
    folder = tmp_path_factory.mktemp("long") / "hf"
    model.save_hf(folder, tokenizer=tiny["tokenizer"])
    return _both(folder, DERIVED, {
        "shakespeare_path": str(shared_data_file("tinyshakespeare.txt")),
        "instructions_path": str(shared_data_file("instruction-data.json"))})


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


def test_tasks_made_from_the_recipes_data_match_hf(derived_both):
    ours, theirs = (_responses(derived_both[k], "kzoo_shakespeare_mc") for k in ("kzoo", "hf"))
    a, b = (np.array([[r[0][0] for r in doc] for doc in x]) for x in (ours, theirs))
    assert a.shape == (12, 4) and np.abs(a - b).max() < 1e-4 and a.std() > 0.1
    ours, theirs = (np.array([doc[0][0][0] for doc in _responses(derived_both[k],
                                                                   "kzoo_instruct_ll")])
                    for k in ("kzoo", "hf"))
    assert len(ours) == 12 and np.abs(ours - theirs).max() < 1e-4 * np.abs(theirs).max()
    assert _responses(derived_both["kzoo"], "kzoo_sums_gen") == \
        _responses(derived_both["hf"], "kzoo_sums_gen")
    for task, metric in (("kzoo_shakespeare_mc", "acc,none"),
                         ("kzoo_instruct_ll", "bits_per_byte,none"),
                         ("kzoo_sums_gen", "exact_match,none")):
        ours, theirs = (derived_both[k]["results"][task][metric] for k in ("kzoo", "hf"))
        assert abs(ours - theirs) <= 1e-6 * abs(theirs), (task, ours, theirs)
