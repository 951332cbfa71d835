"""DPO under tf.distribute.MirroredStrategy with 2 logical CPU devices.

Logical devices must be configured before TensorFlow initialises, so the check runs in a fresh
process. With SGD (whose step is proportional to the gradient, unlike Adam's first step), two
replicas of 4 pairs must take exactly the step that one device takes on the 8 pairs, and log the
same metrics: the loss is reduced by the global batch size, not by the replica's.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, os, sys
os.environ["KERAS_BACKEND"] = "tensorflow"
from kzoo.training.distribute import split_cpu
split_cpu(2)
import keras, numpy as np, tensorflow as tf
from kzoo.data.preference import preference_dataset
from kzoo.models import CausalLM
from kzoo.alignment.dpo import DPOModel

rng = np.random.default_rng(0)
n, length = 8, 12
mask = np.zeros((n, 2, length), "float32"); mask[:, :, 4:] = 1.0
arrays = {"token_ids": rng.integers(0, 16, (n, 2, length)).astype("int32"), "loss_mask": mask}
cfg = dict(vocab_size=16, num_layers=1, num_heads=2, hidden_dim=16, max_sequence_length=16)
keras.utils.set_random_seed(1)
w_policy, w_reference = CausalLM(**cfg).get_weights(), CausalLM(**cfg).get_weights()

def run(strategy):
    with strategy.scope():
        policy = CausalLM(**cfg); policy.set_weights(w_policy)
        reference = CausalLM(**cfg); reference.set_weights(w_reference)
        dpo = DPOModel(policy, reference, beta=0.5)
        dpo.compile(optimizer=keras.optimizers.SGD(0.5))
    history = dpo.fit(preference_dataset(arrays, n, shuffle=False), epochs=2, verbose=0)
    return history.history, [v.numpy().tolist() for v in policy.trainable_variables]

single = run(tf.distribute.get_strategy())
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert mirrored.num_replicas_in_sync == 2
both = run(mirrored)
print("RESULT" + json.dumps({"single": single, "mirrored": both}))
"""


def test_mirrored_two_replicas_match_one_device():
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    result = json.loads(line[len("RESULT"):])
    (h1, w1), (h2, w2) = result["single"], result["mirrored"]
    assert set(h1) == set(h2) and "rewards/accuracy" in h1
    # The second epoch's values depend on the first step: a wrong reduction would change them.
    assert abs(h1["loss"][1] - h1["loss"][0]) > 1e-3
    for name in h1:
        np.testing.assert_allclose(h2[name], h1[name], rtol=1e-5, atol=1e-6, err_msg=name)
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-4, atol=1e-6)
