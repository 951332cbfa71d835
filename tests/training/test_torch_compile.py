"""The compiled train step on PyTorch (`kzoo.backend.compile_train_step`): the whole step is
recorded once per batch shape and replayed, and it gives the eager step's losses.

One child process with KERAS_BACKEND=torch runs every case, each twice from the same seed:
eager (`jit_compile=False`, Keras' own loop) and compiled, over batches of two shapes in the
order A A A B B A, then three evaluations (A B A, the test step). Checked: the compiled train
and test losses equal the eager ones (rtol 1e-5: the recorded graph runs the same kernels;
`aot_eager` fuses none), exactly two graphs are recorded for each step (one per shape; a
re-trace per step or per Python value would give more), no step falls back to eager, and the
weights end where eager ones do. Cases: pre-training (the recipe's `_compile`: Keras' own
`train_step` on a `CausalLM`, AdamW on a warmup schedule of the iteration counter, clipping),
through `train_on_batch` and through `fit` (batches of 4, 4 and 2 rows, validation data), and
through `torch.compile(backend="aot_eager")` of the graph, whose dynamo counters must show one
graph per step and shape and no recompile or graph break; the custom steps of SFT, DPO, KTO and
GRPO (RLOO is the same `PolicyGradientModel` step); dropout (new masks at each replay); and an
unknown compiler name (one line). Inductor is not run here: it compiles C++ for a minute per
shape on a loaded 2-core CPU (benchmarks/torch_compile.py measures it).
"""

import json

import pytest

from tests.helpers import run_backend_children

pytest.importorskip("torch")

CASES = ("pretrain", "pretrain_fit", "pretrain_aot_eager", "sft", "dpo", "kto", "grpo")
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5
ORDER = (0, 0, 0, 1, 1, 0)  # batch shape of each step: two shapes, coming back to the first

CHILD = r'''
import json, sys
import numpy as np
import keras
import torch._dynamo.utils
from kzoo import backend
from kzoo.alignment.dpo import DPOModel, frozen_copy
from kzoo.alignment.kto import KTOModel
from kzoo.alignment.online import PolicyGradientModel
from kzoo.alignment.sft import SFTModel
from kzoo.models import CausalLM
from kzoo.training.pretrain import PretrainConfig, _compile

ORDER = json.loads(sys.argv[2])
LENGTHS = (8, 12)


def policy(dropout=0.0):
    keras.utils.set_random_seed(0)
    model = CausalLM(vocab_size=12, num_layers=1, num_heads=2, hidden_dim=16,
                     intermediate_dim=32, max_sequence_length=16, dropout=dropout)
    model(np.zeros((1, 4), "int32"))
    return model


def batch(case, length, step):
    rng = np.random.default_rng(step)
    response = np.zeros((4, length), "float32")
    response[:, length // 2:] = 1.0
    if case.startswith("pretrain") or case in ("sft", "dropout"):
        ids = rng.integers(0, 12, (4, length + 1)).astype("int32")
        return ids[:, :-1], ids[:, 1:], (response if case == "sft" else None)
    if case == "dpo":
        return ({"token_ids": rng.integers(0, 12, (2, 2, length)).astype("int32"),
                 "loss_mask": response[:2, None].repeat(2, 1)},)
    if case == "kto":
        return ({"token_ids": rng.integers(0, 12, (4, length)).astype("int32"),
                 "loss_mask": response, "labels": np.array([1, 0, 1, 0], "float32"),
                 "kl_token_ids": rng.integers(0, 12, (4, length)).astype("int32"),
                 "kl_loss_mask": response},)
    return ({"token_ids": rng.integers(0, 12, (4, length)).astype("int32"),
             "completion_mask": response, "prompt_mask": 1.0 - response,
             "advantages": np.array([1.0, -1.0, 0.5, -0.5], "float32"),
             "old_logps": rng.normal(-2.3, 0.4, (4, length - 1)).astype("float32"),
             "ref_logps": rng.normal(-2.3, 0.4, (4, length - 1)).astype("float32")},)


def trainer(case, jit):
    model = policy(0.3 if case == "dropout" else 0.0)
    optimizer = keras.optimizers.AdamW(1e-2)
    if case.startswith("pretrain"):
        # The recipe's compile: Keras' own train_step, AdamW on a warmup + cosine schedule of
        # the iteration counter (the learning rate changes every step), clipping by norm.
        config = PretrainConfig()
        config.train.steps, config.train.warmup_steps = 8, 2
        config.train.learning_rate, config.train.jit_compile = 1e-2, jit
        _compile(model, config)
        return model, model
    if case == "dropout":  # Adam(0): the weights stay, only the dropout masks change the loss
        # (not SGD: Keras' torch SGD reads its learning rate into Python, so such a step is
        # run eagerly, with a warning)
        model.compile(optimizer=keras.optimizers.Adam(0.0), loss=keras.losses.
                      SparseCategoricalCrossentropy(from_logits=True), jit_compile=False)
        backend.compile_train_step(model, jit)
        return model, model
    if case == "sft":
        tuner = SFTModel(model)
    elif case == "dpo":
        tuner = DPOModel(model, frozen_copy(model), beta=0.5)
    elif case == "kto":
        tuner = KTOModel(model, frozen_copy(model), beta=0.5)
    else:
        tuner = PolicyGradientModel(model, algorithm="grpo", beta=0.1, epsilon=0.2)
    tuner.compile(optimizer=optimizer, jit_compile=jit)  # PolicyModel.compile: kzoo's step
    return tuner, model


def run(case, jit):
    tuner, model = trainer(case, jit)
    start = [np.asarray(w).tolist() for w in model.get_weights()]
    if case == "pretrain_fit":  # Keras' fit loop: batches of 4, 4 and 2 rows
        ids = np.random.default_rng(0).integers(0, 12, (10, 9)).astype("int32")
        history = tuner.fit(ids[:, :-1], ids[:, 1:], batch_size=4, epochs=2, shuffle=False,
                            validation_data=(ids[:6, :-1], ids[:6, 1:]), verbose=0).history
        train, test = tuner.train_function, tuner.test_function
        return {"losses": history["loss"], "tests": history["val_loss"],
                "traces": getattr(train, "traces", None),
                "test_traces": getattr(test, "traces", None),
                "eager_steps": getattr(train, "eager_steps", 0) + getattr(
                    test, "eager_steps", 0), "start": start,
                "weights": [np.asarray(w).tolist() for w in model.get_weights()]}
    losses, tests = [], []
    for step, shape in enumerate(ORDER):
        x, *rest = batch(case, LENGTHS[shape], 0 if case == "dropout" else step)
        y, weight = (rest + [None, None])[:2]
        logs = tuner.train_on_batch(x, y, sample_weight=weight, return_dict=True)
        losses.append(float(logs["loss"]))
    for shape in (0, 1, 0):  # evaluation: the test step, compiled the same way
        x, *rest = batch(case, LENGTHS[shape], 99)
        y, weight = (rest + [None, None])[:2]
        tests.append(float(tuner.test_on_batch(x, y, sample_weight=weight,
                                               return_dict=True)["loss"]))
    train, test = tuner.train_function, tuner.test_function
    return {"losses": losses, "tests": tests, "traces": getattr(train, "traces", None),
            "test_traces": getattr(test, "traces", None),
            "eager_steps": getattr(train, "eager_steps", 0) + getattr(test, "eager_steps", 0),
            "start": start, "weights": [np.asarray(w).tolist() for w in model.get_weights()]}


out = {}
try:
    backend.compile_train_step(policy(), "xla")
except ValueError as error:
    out["bad_compiler"] = str(error)
for case in sys.argv[1].split(","):
    jit = "aot_eager" if case.endswith("aot_eager") else True
    torch._dynamo.utils.counters.clear()
    compiled = run(case, jit)
    dynamo = {k: dict(v) for k, v in torch._dynamo.utils.counters.items() if v}
    out[case] = {"compiled": compiled, "dynamo": dynamo, "eager": run(case, False)}
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def results():
    child = run_backend_children(["-c", CHILD, ",".join((*CASES, "dropout")), json.dumps(ORDER)],
                                 ("torch",))["torch"]
    return child.check().json()


@pytest.mark.parametrize("case", CASES)
def test_compiled_step_traces_once_per_shape(case, results):
    compiled = results[case]["compiled"]
    # Two batch shapes: six steps (fit: two epochs of 4, 4, 2 rows) record two train graphs,
    # and the evaluations two test graphs; none of the steps runs eagerly.
    assert (compiled["traces"], compiled["test_traces"]) == (2, 2), compiled
    assert compiled["eager_steps"] == 0, compiled
    assert results[case]["eager"]["traces"] is None  # jit_compile=False: Keras' eager step


@pytest.mark.parametrize("case", CASES)
def test_compiled_step_gives_the_eager_losses(case, results):
    import numpy as np

    eager, compiled = results[case]["eager"], results[case]["compiled"]
    np.testing.assert_allclose(compiled["losses"], eager["losses"], rtol=LOSS_RTOL)
    np.testing.assert_allclose(compiled["tests"], eager["tests"], rtol=LOSS_RTOL)
    if case != "pretrain_fit":  # fit logs one running mean per epoch
        assert len(set(eager["losses"])) == len(eager["losses"])  # each step its own loss
    moved = 0.0
    for got, want, start in zip(compiled["weights"], eager["weights"], eager["start"],
                                strict=True):
        np.testing.assert_allclose(got, want, atol=WEIGHT_ATOL)
        moved = max(moved, float(np.max(np.abs(np.subtract(want, start)))))
    assert moved > 1e-3  # the steps trained: equal weights are not equal starting points


def test_dropout_draws_new_masks_at_every_replay(results):
    """Dropout 0.3 under Adam(0) on one batch: a mask frozen into the graph at the recording
    would give the same loss at every step. The replayed graph draws its masks from torch's
    global generator in the eager step's order, so the losses are the eager ones."""
    compiled, eager = results["dropout"]["compiled"], results["dropout"]["eager"]
    assert compiled["traces"] == 2 and compiled["eager_steps"] == 0, compiled
    assert len(set(compiled["losses"][:3])) == 3, compiled["losses"]
    import numpy as np

    np.testing.assert_allclose(compiled["losses"], eager["losses"], rtol=LOSS_RTOL)


def test_aot_eager_compiles_one_dynamo_graph_per_shape(results):
    stats = results["pretrain_aot_eager"]["dynamo"]
    assert stats["stats"]["unique_graphs"] == 4, stats  # train and test, two shapes each
    assert not stats.get("recompiles"), stats
    assert not stats.get("graph_break"), stats
    # The graph-replay cases never reach dynamo at all.
    assert "stats" not in results["pretrain"]["dynamo"], results["pretrain"]["dynamo"]


def test_an_unknown_compiler_is_one_line_naming_the_valid_ones(results):
    message = results["bad_compiler"]
    assert "\n" not in message and "'xla'" in message, message
    assert all(name in message for name in ("graph", "inductor", "aot_eager")), message
