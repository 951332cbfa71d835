"""`import kzoo` on JAX or PyTorch never imports TensorFlow, and works where it is not installed.

Each check is a child process with KERAS_BACKEND=jax or torch. "Not installed" is simulated
with `sys.modules["tensorflow"] = None`: an import of it fails and `importlib.util.find_spec`
answers None, as on a machine without the package. The child imports every library package and
generates a few tokens; a second child (TensorFlow importable) checks that nothing imported it.
"""

import pytest

from tests.helpers import run_backend_children

PACKAGES = ["kzoo", "kzoo.layers", "kzoo.models", "kzoo.samplers", "kzoo.generation",
            "kzoo.losses", "kzoo.viz", "kzoo.tokenizers", "kzoo.interop", "kzoo.alignment",
            "kzoo.alignment.dpo", "kzoo.alignment.kto", "kzoo.alignment.rl", "kzoo.training",
            "kzoo.training.pretrain", "kzoo.data", "kzoo.backend"]

USE = r'''
import importlib, sys
for name in sys.argv[2].split(","):
    importlib.import_module(name)
import numpy as np
from kzoo.generation import generate
from kzoo.models import CausalLM
model = CausalLM.from_preset("gpt_nano", vocab_size=32)
tokens = generate(model, [[1, 2, 3]], max_new_tokens=4).token_ids[0]
assert len(tokens) == 4, tokens
print("tensorflow imported:", sys.modules.get("tensorflow") is not None)
'''

BACKENDS = ("jax", "torch")
# label ("backend/tensorflow missing or there") -> backend. Missing and there need a process
# each: `import kzoo` happens once a process.
CHILDREN = {**{f"{b}/{state}": b for b in BACKENDS for state in ("missing", "there")},
            "tensorflow/there": "tensorflow"}


def _script(label: str) -> str:
    blocked = label.endswith("/missing")
    return ('import sys; sys.modules["tensorflow"] = None\n' if blocked else "") + USE


@pytest.fixture(scope="module")
def children():
    """{label: CompletedChild}, all five children started at once."""
    return run_backend_children(lambda label: ["-c", _script(label), "x", ",".join(PACKAGES)],
                                CHILDREN)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("block", [True, False], ids=["tensorflow-missing", "tensorflow-there"])
def test_import_kzoo_without_tensorflow(children, backend, block):
    child = children[f"{backend}/{'missing' if block else 'there'}"].check()
    assert "tensorflow imported: False" in child.stdout, child.stdout


def test_the_check_can_tell(children):
    # On TensorFlow the same child reports the import: the probe sees it when it happens.
    child = children["tensorflow/there"].check()
    assert "tensorflow imported: True" in child.stdout
