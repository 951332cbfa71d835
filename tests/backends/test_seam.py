"""One backend seam: only kzoo/backend (and the tf.data path in kzoo/data) imports a backend.

The scan parses every kzoo/**/*.py with `ast` and fails naming file:line for each import of
TensorFlow, TFDS, JAX or PyTorch (also `importlib.import_module("...")`, `__import__` and Keras'
own per-backend modules `keras.src.backend.<name>`) outside kzoo/backend and kzoo/data, and for
each reading of the backend's name (`keras.backend.backend()`, `keras.config.backend()`) outside
kzoo/backend. The few that are kept on purpose are listed in ALLOWED with the reason.

The seam's functions are then checked on every backend, in one child process per backend
(KERAS_BACKEND=tensorflow / jax / torch, all started at once: devices are split before the first
op, so each wants a fresh process).
"""

import ast
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT, run_backend_children

PACKAGE = ROOT / "kzoo"
BACKEND_PACKAGES = {"tensorflow", "tensorflow_datasets", "jax", "jaxlib", "torch"}
BACKEND_NAMES = ("tensorflow", "jax", "torch")
IMPORTS_EXEMPT = ("kzoo/backend/", "kzoo/data/")  # the seam; the tf.data / TFDS data path
NAME_READS_EXEMPT = ("kzoo/backend/",)
# (file, what): why it stays outside the seam.
ALLOWED = {
    ("kzoo/_quiet.py", "import tensorflow"):
        "the quiet import of the TensorFlow backend itself (file descriptor 2 muted)",
    ("kzoo/layers/attention.py", "backend name"):
        "attention_impl='auto' picks the fused kernel off TensorFlow (kzoo/layers)",
    ("kzoo/interop/hf_weights.py", "backend name"):
        "sliced assignment of large tensors into TensorFlow variables (interop)",
}
# Features dispatched by `_module` that only one backend needs (`stateful_step`: only JAX's
# trainer calls a step with its state; `update_slice`: only PyTorch writes in place, the
# others take Keras' `slice_update`; `compile_step`: only PyTorch runs its loops eagerly).
ONE_BACKEND_FEATURES = {"stateful_step": "jax", "update_slice": "torch", "compile_step": "torch",
                        "compile_train_step": "torch"}


def _is_backend_module(module: str) -> bool:
    parts = module.split(".")
    if parts[0] in BACKEND_PACKAGES:
        return True
    return parts[:3] == ["keras", "src", "backend"] and len(parts) > 3 and (
        parts[3] in BACKEND_NAMES)


def _call_name(func) -> str:
    # "keras.backend.backend" for keras.backend.backend(...), "" for anything not dotted.
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
        return ".".join(reversed(parts))
    return ""


def scan(source: str, filename: str = "<source>") -> list:
    """(line, "import X" | "backend name") for each backend import and backend-name reading."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        modules = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Call):
            called = _call_name(node.func)
            if called.split(".")[-1] in ("import_module", "__import__") and node.args and (
                    isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                modules = [node.args[0].value]
            elif called in ("keras.backend.backend", "keras.config.backend", "backend.backend"):
                found.append((node.lineno, "backend name"))
        hits = [m for m in modules if _is_backend_module(m)]
        if hits:
            found.append((node.lineno, f"import {hits[0].split('.')[0]}"))
    return sorted(set(found))


def _violations() -> list:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for line, what in scan(path.read_text(encoding="utf-8"), rel):
            exempt = NAME_READS_EXEMPT if what == "backend name" else IMPORTS_EXEMPT
            if rel.startswith(exempt) or (rel, what) in ALLOWED:
                continue
            out.append(f"{rel}:{line}: {what}")
    return out


def test_the_scan_finds_every_form_of_backend_import():
    source = "\n".join([
        "import keras",                                  # 1: fine
        "import tensorflow as tf",                       # 2
        "from jax import numpy as jnp",                  # 3
        "def f():",
        "    import torch.nn",                           # 5
        "    from keras.src.backend import jax",         # 6
        "    from keras.src.backend.torch import core",  # 7
        "    from keras.src.backend.common import x",    # 8: fine, shared code
        "    importlib.import_module('tensorflow_datasets')",  # 9
        "    __import__('jaxlib')",                      # 10
        "    return keras.backend.backend() == 'jax'",   # 11
        "from kzoo import backend",                      # 12: the seam itself, fine
        "import tensorflowjs_like_name",                 # 13: not TensorFlow
        "x = keras.config.backend()",                    # 14
    ])
    assert [line for line, _ in scan(source)] == [2, 3, 5, 6, 7, 9, 10, 11, 14]
    assert dict(scan(source))[5] == "import torch"
    assert dict(scan(source))[11] == "backend name"


def test_only_the_backend_seam_imports_a_backend():
    violations = _violations()
    assert not violations, (
        "backend-specific code outside kzoo/backend (move it behind a function of "
        "kzoo/backend/__init__.py, or list it in ALLOWED with the reason):\n"
        + "\n".join(violations))


def test_every_allowance_is_still_used():
    # A stale entry would let a new import in that file pass unseen.
    used = {(path.relative_to(ROOT).as_posix(), what) for path in PACKAGE.rglob("*.py")
            for _, what in scan(path.read_text(encoding="utf-8"))}
    assert set(ALLOWED) <= used, sorted(set(ALLOWED) - used)


def _defined_functions(path: Path) -> set:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def test_every_dispatched_feature_is_in_every_backend_module():
    tree = ast.parse((PACKAGE / "backend/__init__.py").read_text(encoding="utf-8"))
    features = {node.args[0].value for node in ast.walk(tree)
                if isinstance(node, ast.Call) and _call_name(node.func) == "_module"
                and node.args and isinstance(node.args[0], ast.Constant)}
    assert {"distribution", "split_cpu", "train_jit_compile", "clip_global_batch"} <= features
    missing = []
    for backend in BACKEND_NAMES:
        defined = _defined_functions(PACKAGE / f"backend/{backend}.py")
        wanted = {f for f in features if ONE_BACKEND_FEATURES.get(f, backend) == backend}
        missing += [f"kzoo/backend/{backend}.py: {f}" for f in sorted(wanted - defined)]
    assert not missing, missing


# The seam's functions on one backend, in a fresh process (devices are split before the first
# op). Prints one JSON line.
CHECKS = r'''
import json, sys
import numpy as np
import keras
from keras import ops
from kzoo import backend

out = {"backend": backend.name(), "names": list(backend.distribution_names())}
try:
    backend.split_cpu(2)
    out["split"] = "ok"
except NotImplementedError as error:
    out["split"] = "NotImplementedError: " + str(error)
for name in ("none", "data_parallel", "multi_worker", "bogus"):
    try:
        strategy = backend.distribution(name)
        out[name] = [type(strategy).__name__, strategy.num_replicas_in_sync]
    except ValueError as error:
        out[name] = "ValueError: " + str(error)
try:
    backend.distribution("none", logical_cpus=2)
    out["none_split"] = "ok"
except ValueError as error:
    out["none_split"] = "ValueError: " + str(error)
out["jit"] = [backend.train_jit_compile(True), backend.train_jit_compile(False)]
eager = ops.ones((2,))
seen = []
backend.compile_function(lambda x: seen.append(backend.is_concrete(x)) or x)(eager)
out["concrete"] = {"eager": backend.is_concrete(eager), "compiled": seen[0],
                   "numpy": backend.is_concrete(np.ones(2)), "list": backend.is_concrete([1])}
grads = [ops.convert_to_tensor([3.0, 0.0]), None]
clipped = backend.clip_global_batch(grads, lambda g: [None if x is None else x * 0.5 for x in g])
out["clip"] = [ops.convert_to_numpy(clipped[0]).tolist(), clipped[1]]
if out["backend"] == "tensorflow":
    import tensorflow as tf
    strategy = backend.distribution("mirrored")

    from kzoo.training.optimizers import AdamW
    with strategy.scope():
        sgd = keras.optimizers.SGD(global_clipnorm=1.0)
        adamw = AdamW(global_clipnorm=1.0)

    def replica_step():
        # Replica 0's gradient (3, 0), replica 1's (0, 4): the global gradient is (3, 4).
        index = tf.distribute.get_replica_context().replica_id_in_sync_group
        grad = tf.where(tf.equal(index, 0), tf.constant([3.0, 0.0]), tf.constant([0.0, 4.0]))
        return (backend.clip_global_batch([grad, None], sgd._clip_gradients)[0],
                adamw._clip_gradients([grad, None])[0])

    seam, optimizer = strategy.run(tf.function(replica_step))
    for key, per_replica in (("mirrored_clip", seam), ("adamw_clip", optimizer)):
        out[key] = [t.numpy().tolist()
                    for t in strategy.experimental_local_results(per_replica)]
print("SEAM " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def seams():
    """The CHECKS results per backend, each from its own child process, all started at once."""
    children = run_backend_children(["-c", CHECKS], BACKEND_NAMES,
                                    env={"TF_CONFIG": None})  # multi_worker must refuse
    return {backend: child.json("SEAM ") for backend, child in children.items()}


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_the_child_ran_the_backend_it_was_given(seams, backend):
    assert seams[backend]["backend"] == backend


def test_distributions_by_backend(seams):
    tf_, jax_, torch_ = (seams[b] for b in BACKEND_NAMES)
    assert tf_["names"] == ["data_parallel", "mirrored", "multi_worker", "none"]
    assert jax_["names"] == ["data_parallel", "fsdp", "mirrored", "none", "tensor_parallel"]
    assert torch_["names"] == ["none"]
    # Two CPU devices after split_cpu(2): two replicas on TensorFlow and JAX.
    assert tf_["data_parallel"] == ["MirroredStrategy", 2]
    assert jax_["data_parallel"] == ["KerasStrategy", 2]
    assert tf_["none"][1] == jax_["none"][1] == torch_["none"][1] == 1
    assert torch_["none"][0] == jax_["none"][0] == "KerasStrategy"
    assert tf_["multi_worker"].startswith(
        "ValueError: distribution 'multi_worker' needs the TF_CONFIG environment variable")
    for result, valid in ((jax_, "['data_parallel', 'fsdp', 'mirrored', 'none', "
                                 "'tensor_parallel']"),
                          (torch_, "['none']")):
        assert result["multi_worker"] == (
            f"ValueError: unknown distribution 'multi_worker' for the {result['backend']} "
            f"backend; valid: {valid}")
    for result in seams.values():
        assert result["bogus"].startswith("ValueError: unknown distribution 'bogus'")
        assert "\n" not in result["bogus"]


def test_split_cpu_and_logical_cpus_on_torch(seams):
    assert seams["tensorflow"]["split"] == seams["jax"]["split"] == "ok"
    assert seams["torch"]["split"].startswith("NotImplementedError: logical_cpus=2")
    assert "allowed: 0 or 1" in seams["torch"]["split"]
    assert seams["torch"]["none_split"].startswith("ValueError: logical_cpus=2")
    assert seams["tensorflow"]["none_split"] == seams["jax"]["none_split"] == "ok"


def test_train_jit_compile(seams):
    assert seams["tensorflow"]["jit"] == seams["jax"]["jit"] == [True, False]
    assert seams["torch"]["jit"] == [False, False]  # torch.compile re-traces the train step


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_is_concrete(seams, backend):
    expected = {"eager": True, "numpy": False, "list": False,
                # torch's compile_function is eager: its tensors hold values.
                "compiled": backend == "torch"}
    assert seams[backend]["concrete"] == expected


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_clip_global_batch_with_one_replica_is_the_clip(seams, backend):
    assert seams[backend]["clip"] == [[1.5, 0.0], None]


def test_clip_global_batch_clips_the_global_gradient_under_mirrored(seams):
    # Outside implementation: numpy's norm of the global gradient (3, 4), clipped to 1, and
    # each replica's share of it (Keras sums the replicas' results next).
    total = np.array([3.0, 0.0]) + np.array([0.0, 4.0])
    share = total / np.linalg.norm(total) / 2
    for key in ("mirrored_clip", "adamw_clip"):  # the seam, and kzoo's AdamW through it
        results = np.array(seams["tensorflow"][key])
        assert results.shape == (2, 2), key
        np.testing.assert_allclose(results, [share, share], rtol=1e-6, err_msg=key)
        # Each replica clipping alone would give (1, 0) and (0, 1): a sum of norm sqrt(2).
        assert np.linalg.norm(results.sum(axis=0)) == pytest.approx(1.0, rel=1e-6), key


def test_keras_strategy_is_the_one_the_training_code_checks():
    from kzoo import backend
    from kzoo.training import distribute

    strategy = backend.KerasStrategy()
    assert distribute.KerasStrategy is backend.KerasStrategy
    assert strategy.num_replicas_in_sync == 1
    assert not distribute.is_tf_distributed(strategy, "data_parallel")
    assert repr(strategy) == "KerasStrategy(NoneType, num_replicas_in_sync=1)"
