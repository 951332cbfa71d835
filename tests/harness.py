"""The shared test harness: one check per kind of thing kzoo registers, so registering a layer,
a model family or a recipe is what gets it tested (keras-hub's `run_backbone_test` in spirit).

- `run_layer_test(layer, inputs)`: the Keras layer contract (every `__init__` argument in
  `get_config()`, a JSON config round trip, a `.keras` round trip with the same outputs), a `fit`
  step that moves every trainable weight, and for sequence layers causality and padding masks.
- `run_recipe_test(name, tmp_path, request)`: one tiny step of a shipped config (its recipe, family,
  tokenizer and method kept; data, depth and steps shrunk), found through the recipe registry.

tests/layers/test_layer_contract.py and tests/recipes/test_every_config.py loop over the
registries with them.

Example:
```python
from kzoo.layers import RMSNorm
from tests.harness import run_layer_test
run_layer_test(RMSNorm(), np.ones((2, 3, 8), "float32"))
```
"""

from __future__ import annotations

import inspect
import io
import json
from pathlib import Path

import keras
import numpy as np
import yaml

from tests.helpers import load_recipe, sets


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def check_config_arguments(layer) -> None:
    """Every named `__init__` argument of the layer's class (and its kzoo bases) is a key of
    `get_config()`: a layer rebuilt from its config is the same layer."""
    config = layer.get_config()
    for cls in type(layer).__mro__:
        if not cls.__module__.startswith("kzoo."):
            continue
        for name, parameter in inspect.signature(cls.__init__).parameters.items():
            if name == "self" or parameter.kind in (parameter.VAR_KEYWORD,
                                                    parameter.VAR_POSITIONAL):
                continue
            assert name in config, f"{cls.__name__}.__init__ takes {name!r}; get_config lacks it"


def check_json_round_trip(layer, inputs, **call_kwargs):
    """JSON config out and back: same class, same config, same outputs with the same weights."""
    expected = _numpy(layer(inputs, **call_kwargs))
    payload = json.dumps(keras.saving.serialize_keras_object(layer))
    clone = keras.saving.deserialize_keras_object(json.loads(payload))
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()
    clone(inputs, **call_kwargs)  # build
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(_numpy(clone(inputs, **call_kwargs)), expected, atol=1e-6)
    return clone


def check_keras_file_round_trip(layer, inputs, tmp_path: Path):
    """The layer inside a model saved to a `.keras` file and loaded: the same outputs."""
    inputs = np.asarray(inputs)
    x = keras.Input(shape=inputs.shape[1:], dtype=str(inputs.dtype))
    model = keras.Model(x, layer(x))
    expected = _numpy(model(inputs))
    path = Path(tmp_path) / f"{type(layer).__name__}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.layers[-1]) is type(layer)
    np.testing.assert_allclose(_numpy(loaded(inputs)), expected, atol=1e-6)


def check_fit_moves_every_weight(layer, inputs, head=None):
    """One SGD `fit` step through the layer (a dense head on top) changes every trainable
    weight of the layer: none is disconnected from the output."""
    inputs = np.asarray(inputs)
    x = keras.Input(shape=inputs.shape[1:], dtype=str(inputs.dtype))
    y = layer(x)
    y = head(y) if head else keras.layers.Dense(1)(y)
    model = keras.Model(x, y)
    target = np.random.default_rng(0).normal(size=(inputs.shape[0], *y.shape[1:]))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = [_numpy(w).copy() for w in layer.trainable_weights]
    assert before, f"{type(layer).__name__} has no trainable weights"
    model.fit(inputs, target.astype("float32"), epochs=1, batch_size=len(inputs), verbose=0)
    for w, old in zip(layer.trainable_weights, before):
        assert not np.allclose(_numpy(w), old), f"weight {w.path} did not change"


def check_causal_and_padding(layer, inputs) -> None:
    """(batch, seq, ...) sequence layers: position t's output ignores positions after t, and a
    key marked as padding does not change the outputs of the real positions."""
    inputs = np.asarray(inputs)
    base = _numpy(layer(inputs))
    changed = inputs.copy()
    changed[:, -1] = changed[:, -1] + 1.0  # only the last position
    after = _numpy(layer(changed))
    np.testing.assert_allclose(after[:, :-1], base[:, :-1], atol=1e-5)
    assert not np.allclose(after[:, -1], base[:, -1]), "the last position ignored its own input"
    # Left padding: position 0 masked; the real positions must not read its (changed) value.
    mask = np.ones(inputs.shape[:2], "int32")
    mask[:, 0] = 0
    masked = _numpy(layer(inputs, padding_mask=mask))
    poked = inputs.copy()
    poked[:, 0] = poked[:, 0] * -3.0 + 5.0
    np.testing.assert_allclose(_numpy(layer(poked, padding_mask=mask))[:, 1:], masked[:, 1:],
                               atol=1e-5)


def run_layer_test(layer, inputs, tmp_path=None, *, sequence: bool = False, head=None):
    """Every check of the layer contract on `layer` called on `inputs`.

    Args:
        layer: keras.layers.Layer. a fresh, unbuilt kzoo layer.
        inputs: numpy array. a batch it takes.
        tmp_path: Path or None. where the `.keras` round trip writes (skipped when None).
        sequence: bool. also check causality and padding masks ((batch, seq, ...) in and out).
        head: callable or None. layers from the layer's output to a trainable prediction
            (default a Dense(1)).
    """
    check_config_arguments(layer)
    check_json_round_trip(layer, inputs)
    if sequence:
        check_causal_and_padding(layer, inputs)
    if tmp_path is not None:
        check_keras_file_round_trip(layer, inputs, tmp_path)
    fresh = type(layer).from_config(layer.get_config())
    check_fit_moves_every_weight(fresh, inputs, head)


# ---- recipes -------------------------------------------------------------------------------

PRETRAIN_TINY = [
    "model.args={num_layers: 1, max_sequence_length: 32}", "train.block_size=16",
    "train.batch_size=4", "train.steps=2", "train.eval_interval=1", "train.val_batches=1",
    "train.warmup_steps=1", "train.verbose=0", "train.tensorboard=false",
    "train.jit_compile=false", "sample.max_new_tokens=4", "data.validation_split=null",
    "data.validation_fraction=0.2",
]
FINE_TUNE_TINY = [
    "model.init_from=null", "model.tokenizer=byte", "model.args={num_layers: 1}",
    "data.max_length=96", "data.validation_fraction=0.25", "train.epochs=1", "train.verbose=0",
    "train.jit_compile=false",
]
# conftest fixtures: skip when KZOO_TEST_DATA is unset, fail when it is set but the file is missing.
_FIXTURES = {"instruction-data.json": "instruction_data_path",
             "instruction-preference.json": "preference_data_path"}


def tiny_text(folder: Path) -> Path:
    """A small English corpus made here (Python's own help topics), for pre-training steps."""
    from pydoc_data.topics import topics

    path = Path(folder) / "tiny.txt"
    if not path.is_file():
        path.write_text("\n\n".join(list(topics.values())[:6])[:20000], encoding="utf-8")
    return path


def _slice(request, source, dst: Path, n=24) -> Path:
    src = request.getfixturevalue(_FIXTURES[source])
    dst.write_text(json.dumps(json.loads(Path(src).read_text())[:n]))
    return dst


def _pretrain(path, run_dir, tmp_path, request):
    code = load_recipe("pretrain").main(["--config", str(path), *sets(
        *PRETRAIN_TINY, f"run_dir={run_dir}", f"data.source={tiny_text(tmp_path)}")])
    assert code == 0
    assert (run_dir / "model.keras").is_file()


def _generate(path, run_dir, tmp_path, request):
    _pretrain(path.with_name(path.name.replace("_generate", "_pretrain")), run_dir, tmp_path,
              request)
    module = load_recipe("generate")
    out = io.StringIO()
    options = module.resolve_options(module.parse_args(
        ["--config", str(path), str(run_dir), "--max-new-tokens", "4"]))
    result = module.run(options, out=out)
    assert isinstance(result["text"], str) and out.getvalue()


def _fine_tune(recipe):
    def step(path, run_dir, tmp_path, request):
        source = "instruction-data.json" if recipe == "sft" else "instruction-preference.json"
        data = _slice(request, source, tmp_path / source)
        code = load_recipe(recipe).main(["--config", str(path), *sets(
            f"run_dir={run_dir}", f"data.path={data}", "data.template=plain", *FINE_TUNE_TINY)])
        assert code == 0
        assert (run_dir / "metrics.json").is_file()
    return step


def _feedback_loop(path, run_dir, tmp_path, request):
    code = load_recipe("feedback_loop").main(["--config", str(path), *sets(
        f"run_dir={run_dir}", "loop.max_operand=6", "loop.lines_per_problem=8",
        "loop.pretrain_epochs=6", "loop.samples_per_prompt=8", "loop.pairs_per_prompt=1",
        "loop.eval_samples_per_prompt=2", "loop.rounds=1", "loop.dpo_epochs=1",
        "loop.control=false", "loop.num_show=1")])
    assert code == 0
    report = json.loads((run_dir / "report.json").read_text())
    tasks = (yaml.safe_load(path.read_text()).get("eval") or {}).get("tasks") or []
    assert set((report.get("eval") or {}).get("before") or {}) == set(tasks)
    for task, metrics in (report.get("eval") or {}).get("before", {}).items():
        # kzoo_sums_gen covers the loop's own max_operand unless told otherwise: 36 sums
        for value in (metrics["exact_match,none"],
                      report["eval"]["after"][task]["exact_match,none"]):
            assert abs(value * 36 - round(value * 36)) < 1e-9 and 0 <= value <= 1
        assert f"{task} exact_match" in (run_dir / "report.md").read_text()


def _online(recipe):
    def step(path, run_dir, tmp_path, request):
        # The shipped configs score with a reward-model run folder: train a tiny one first.
        pairs = _slice(request, "instruction-preference.json", tmp_path / "pairs.json")
        prompts = _slice(request, "instruction-data.json", tmp_path / "prompts.json", n=12)
        reward_dir = tmp_path / "reward"
        assert load_recipe("reward").main([
            "--config", str(path.with_name("baby_instruction_reward.yaml")), *sets(
                f"run_dir={reward_dir}", f"data.path={pairs}", *FINE_TUNE_TINY)]) == 0
        code = load_recipe(recipe).main(["--config", str(path), *sets(
            f"run_dir={run_dir}", f"data.path={prompts}", "model.init_from=null",
            "model.tokenizer=byte", "model.args={num_layers: 1}",
            f"rewards=[{{reward: {reward_dir}, weight: 1.0}}, "
            "{reward: format_ends, weight: 0.1}]",
            "generation.num_generations=2", "generation.max_new_tokens=4",
            "generation.max_prompt_length=64", "generation.jit_compile=false",
            "train.steps=2", "train.batch_size=4", "train.eval_interval=1",
            "train.eval_prompts=2", "train.eval_samples=2", "train.verbose=0")])
        assert code == 0
        metrics = json.loads((run_dir / "metrics.json").read_text())
        held = min(metrics["split"]["held_out_prompts"], 2)
        assert len(metrics["history"]) == 2 and held >= 1
        assert metrics["held_out_after"]["samples"] == 2 * held
        assert (run_dir / "model.keras").is_file()
    return step


# One tiny step per recipe (by the module's name); a registered recipe with configs and no
# entry here fails tests/recipes/test_every_config.py.
TINY_STEPS = {
    "pretrain": _pretrain, "generate": _generate, "feedback_loop": _feedback_loop,
    **{name: _fine_tune(name) for name in ("sft", "dpo", "reward", "kto", "orpo")},
    **{name: _online(name) for name in ("grpo", "rloo")},
}


def run_recipe_test(config_name: str, tmp_path: Path, request) -> None:
    """One tiny step of the shipped config `config_name` (`family/stem`) through its recipe.

    Args:
        config_name: str. a name from `kzoo.recipes.registry.shipped_configs()`.
        tmp_path: Path. the test's folder (the run folder and data slices go there).
        request: pytest's request (for the shared-data fixtures).
    """
    from kzoo.recipes.registry import recipe_of_config, shipped_configs

    recipe = recipe_of_config(config_name)
    assert recipe is not None, f"no recipe lists {config_name}"
    step = TINY_STEPS.get(recipe.name)
    assert step is not None, f"no tiny step for recipe {recipe.name!r}: add one to TINY_STEPS"
    step(shipped_configs()[config_name], tmp_path / "run", tmp_path, request)
