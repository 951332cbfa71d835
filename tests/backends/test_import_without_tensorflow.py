"""`import kzoo` on JAX or PyTorch never imports TensorFlow, and works where it is not installed.

Each check is a child process with KERAS_BACKEND=jax or torch. "Not installed" is simulated
with `sys.modules["tensorflow"] = None`: an import of it fails and `importlib.util.find_spec`
answers None, as on a machine without the package. The child imports every library package and
generates a few tokens; a second child (TensorFlow importable) checks that nothing imported it.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
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


def _child(backend, block_tensorflow):
    prelude = 'import sys; sys.modules["tensorflow"] = None\n' if block_tensorflow else ""
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", prelude + USE, "x", ",".join(PACKAGES)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.parametrize("block", [True, False], ids=["tensorflow-missing", "tensorflow-there"])
def test_import_kzoo_without_tensorflow(backend, block):
    proc = _child(backend, block)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tensorflow imported: False" in proc.stdout, proc.stdout


def test_the_check_can_tell():
    # On TensorFlow the same child reports the import: the probe sees it when it happens.
    proc = _child("tensorflow", False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tensorflow imported: True" in proc.stdout
