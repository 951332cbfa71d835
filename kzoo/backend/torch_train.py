"""PyTorch: a whole train step (forward, backward, optimizer, metrics) recorded once per batch
signature as one graph of ATen ops and replayed, optionally compiled by `torch.compile`.

`kzoo.backend.compile_train_step` on PyTorch. Keras' torch `jit_compile=True` wraps
`train_step` in `torch.compile`, and dynamo then traces Keras' Python layer by layer: it breaks
the graph where Keras reads numpy dtypes or Python state (`convert_to_tensor`, the vocabulary
check, `loss.backward()`), and each layer instance's `_parent_path`, `_called` flag and type are
guards of the shared `Layer.__call__` / `forward` / `__setattr__` frames, so every layer
recompiles them until dynamo's recompile limit sends them back to eager (a 4-step tiny
pre-training took 152 s compiled and 10 s eager). kzoo records the step the way Keras' JAX
trainer runs it instead: every variable (trainable, non-trainable, optimizer slots and its
iteration counter, metric totals) is an input of the graph through a `keras.StatelessScope`,
and `make_fx` records, on fake tensors, the forward pass, the backward pass `loss.backward()`
runs, the optimizer's in-place `_foreach` updates and the metrics' assignments. The iteration
counter, a learning-rate schedule and dropout are tensor ops in the graph (dropout on torch's
global generator: `_global_dropout`), so nothing of one step is frozen into it; the only cache
key is the batch's structure, shapes and dtypes.
"""

import contextlib
import warnings

import keras
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from kzoo.backend.torch_graph import _reads_an_input, _rebuild, _structure

# How a recorded graph runs: "graph" replays the ATen graph as it is (no compiler, no Keras
# Python); "inductor" and "aot_eager" hand it to `torch.compile` with that backend.
COMPILERS = ("graph", "inductor", "aot_eager")
# What `jit_compile=True` means on PyTorch (chosen from benchmarks/torch_compile.py).
DEFAULT_COMPILER = "graph"


class CompiledTrainStep:
    """A Keras model's `train_step` (or `test_step`) recorded once per batch signature and
    replayed; Keras' torch trainer calls it as its `train_function` / `test_function`
    (`step([batch]) -> logs`).

    Args:
        model: keras.Model. compiled.
        compiler: str. one of `COMPILERS`.
        train: bool. record `train_step` (forward, backward, optimizer, metrics); False:
            `test_step` (forward and metrics).

    Attributes:
        traces: int. graphs recorded so far (one per batch structure, shapes and dtypes).
        eager_steps: int. steps run eagerly: the first one of an unbuilt model (it creates the
            weights, optimizer slots and metrics the graph reads) and any step that cannot be
            recorded (a warning says why).

    Example (KERAS_BACKEND=torch; `kzoo.backend.compile_train_step` installs it for `fit`):
    ```python
    import numpy as np
    from kzoo.backend.torch_train import CompiledTrainStep
    from kzoo.models import CausalLM
    model = CausalLM.from_preset("gpt_nano", vocab_size=64)
    model.compile(optimizer="adamw", jit_compile=False)
    model.train_function = CompiledTrainStep(model)
    ids = np.random.randint(0, 64, (2, 9)).astype("int32")
    model.train_on_batch(ids[:, :-1], ids[:, 1:])   # recorded once for (2, 8), then replayed
    model.train_function.traces                     # 1
    ```
    """

    def __init__(self, model, compiler=DEFAULT_COMPILER, train=True):
        if compiler not in COMPILERS:
            raise ValueError(f"jit_compile={compiler!r} is not a PyTorch train-step compiler; "
                             f"valid: True, False or one of {list(COMPILERS)}")
        self.model = model
        self.compiler = compiler
        self.train = train
        self.graphs = {}  # signature -> (program, indices of assigned variables, logs key)
        self.traces = 0
        self.eager_steps = 0
        self.held = None

    def __call__(self, data):
        (batch,) = data  # Keras' torch trainer passes [batch]
        batch = _as_tensors(batch)
        leaves = []
        try:
            key = _structure(batch, leaves)
        except TypeError:  # a batch element neither a tensor nor a hashable constant
            return self._eager(batch)
        if self.held is None:
            if _unbuilt(self.model, self.train):
                return self._eager(batch)  # builds what the graph must read as inputs
            self.held = _state_variables(self.model, self.train)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self._trace(key, leaves)
        if entry is False:
            return self._eager(batch)
        program, assigned, logs_key = entry
        with torch.no_grad():  # the graph holds the backward pass: no autograd at replay
            outputs = program(*[v.value for v in self.held], *leaves)
            for i, new in zip(assigned, outputs):
                self.held[i].value.copy_(new)  # in-place updates happened in the graph
        return _rebuild(logs_key, iter(outputs[len(assigned):]))

    def _eager(self, batch):
        self.eager_steps += 1
        return self._step(batch)

    def _step(self, batch):
        return self.model.train_step(batch) if self.train else self.model.test_step(batch)

    def _trace(self, key, leaves):
        held, count, found = self.held, len(self.held), {}

        def step(*inputs):
            batch = _rebuild(key, iter(inputs[count:]))
            with keras.StatelessScope(state_mapping=list(zip(held, inputs[:count]))) as scope:
                logs = self._step(batch)
            # Assignments (iteration counter, metric totals) are recorded in the scope; the
            # optimizer's `_foreach_*_` updates write the graph's inputs in place.
            found["assigned"] = [i for i, v in enumerate(held)
                                 if scope.get_current_value(v) is not None]
            out = []
            found["logs"] = _structure(logs, out)
            return [scope.get_current_value(held[i]) for i in found["assigned"]] + out

        self.traces += 1
        # Trainable inputs require grad, so that `loss.backward()` is recorded as ATen ops.
        examples = [v.value.detach().requires_grad_(
            self.train and v.trainable and v.value.is_floating_point()) for v in held]
        try:
            with _global_dropout(self.model):
                graph = make_fx(step, tracing_mode="fake")(*examples, *leaves)
            if _reads_an_input(graph):
                raise RuntimeError("the step reads a tensor's value in Python")
        except Exception as error:  # noqa: BLE001 - any failure to record: run eagerly
            warnings.warn(f"the PyTorch train step could not be recorded ({type(error).__name__}"
                          f": {str(error).splitlines()[0][:200]}); running it eagerly",
                          stacklevel=3)
            return False
        program = graph
        if self.compiler != "graph":
            program = torch.compile(graph, backend=self.compiler, dynamic=False, fullgraph=True)
        return program, found["assigned"], found["logs"]


@contextlib.contextmanager
def _global_dropout(model):
    """Record dropout on torch's global generator. Keras' torch dropout with a seeded
    `SeedGenerator` (a layer given `seed=`) makes a `torch.Generator` from `int(seed state)`:
    a Python value, which would freeze one mask into the graph. Unseeded (kzoo's layers), it
    is `torch.nn.functional.dropout`, a random op of the graph that draws a new mask at every
    replay from the global generator (`keras.utils.set_random_seed` seeds it: runs repeat).
    A seeded layer's masks then differ from its eager ones; an unseeded one's do not."""
    generators = [g for layer in model._flatten_layers() for g in layer._seed_generators]
    seeds = [g._initial_seed for g in generators]
    for g in generators:
        g._initial_seed = None
    try:
        yield
    finally:
        for g, seed in zip(generators, seeds):
            g._initial_seed = seed


def _state_variables(model, train):
    """Every variable a step reads or writes, each once, in a fixed order."""
    seen, held = set(), []
    optimizer = model.optimizer.variables if train and model.optimizer is not None else []
    for v in [*model.trainable_variables, *model.non_trainable_variables, *optimizer,
              *model.metrics_variables]:
        if id(v) not in seen:
            seen.add(id(v))
            held.append(v)
    return held


def _unbuilt(model, train):
    # What Keras' `_symbolic_build` checks: these create variables at their first call.
    compiled = [getattr(model, "_compile_metrics", None), getattr(model, "_compile_loss", None)]
    return (not all(layer.built for layer in model._flatten_layers())
            or any(c is not None and not c.built for c in compiled)
            or (train and model.optimizer is not None and not model.optimizer.built))


def _as_tensors(batch):
    return torch.utils._pytree.tree_map(
        lambda x: torch.as_tensor(x) if hasattr(x, "__array__") and not isinstance(
            x, torch.Tensor) else x, batch)


def install(model, compiler):
    """Make `fit` / `train_on_batch` and `evaluate` / `test_on_batch` run `CompiledTrainStep`s
    (compiler None: Keras' own eager steps again)."""
    for kind in ("train", "test"):
        model.__dict__.pop(f"make_{kind}_function", None)
        setattr(model, f"{kind}_function", None)
        if compiler is not None:
            # An instance attribute: Keras' trainer calls `self.make_train_function()` (and
            # `make_test_function`) before each loop; a None function is made again.
            model.__dict__[f"make_{kind}_function"] = _maker(model, compiler, kind)


def _maker(model, compiler, kind):
    def make_function(force=False):
        if model.steps_per_execution > 1:  # Keras' torch trainer refuses it the same way
            raise ValueError("`steps_per_execution` must be 1 with the PyTorch backend. "
                             f"Received: steps_per_execution={model.steps_per_execution}")
        if getattr(model, f"{kind}_function") is None or force:
            setattr(model, f"{kind}_function",
                    CompiledTrainStep(model, compiler, train=kind == "train"))
        return getattr(model, f"{kind}_function")

    return make_function


__all__ = ["COMPILERS", "DEFAULT_COMPILER", "CompiledTrainStep", "install"]
