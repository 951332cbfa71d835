"""tf.distribute: mirrored over two logical CPUs and two workers on 127.0.0.1 train exactly
like one device with the same global batch."""

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kzoo.training import PretrainConfig, load_config, pretrain

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recipes/configs/gpt/nano_pydocs_pretrain.yaml"
SETTINGS = [
    "tokenizer.kind=char", "tokenizer.vocab_size=null", "model.args={max_sequence_length: 32}",
    "train.block_size=16", "train.batch_size=8", "train.steps=4", "train.eval_interval=2",
    "train.val_batches=2", "train.warmup_steps=1", "train.verbose=0", "train.jit_compile=false",
    "train.tensorboard=false", "sample.max_new_tokens=4", "sample.every_interval=false",
]


def command(run_dir, *extra, result=None):
    cmd = [sys.executable, str(ROOT / "recipes/pretrain.py"), "--config", str(DEMO)]
    for item in [*SETTINGS, f"run_dir={run_dir}", *extra]:
        cmd += ["--set", item]
    return cmd + (["--result-json", str(result)] if result else [])


def losses(run_dir):
    rows = list(csv.DictReader((Path(run_dir) / "metrics.csv").open()))
    return [(float(r["loss"]), float(r["val_loss"])) for r in rows]


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
    run = tmp_path_factory.mktemp("single") / "run"
    pretrain(load_config(DEMO, PretrainConfig, [*SETTINGS, f"run_dir={run}"]))
    return losses(run)


def env():
    return dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")


def test_mirrored_two_logical_cpus_equals_single_device(single_device, tmp_path):
    out = tmp_path / "result.json"
    done = subprocess.run(
        command(tmp_path / "run", "train.distribution=mirrored", "train.logical_cpus=2",
                result=out),
        env=env(), cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Number of devices: 2" in done.stdout + done.stderr or json.loads(out.read_text())
    mirrored = losses(tmp_path / "run")
    assert len(mirrored) == len(single_device) == 2
    for (loss, val), (ref_loss, ref_val) in zip(mirrored, single_device):
        assert loss == pytest.approx(ref_loss, rel=1e-4)
        assert val == pytest.approx(ref_val, rel=1e-4)


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_on_localhost_equal_single_device(single_device, tmp_path):
    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        procs.append(subprocess.Popen(
            command(tmp_path / "run", "train.distribution=multi_worker",
                    result=tmp_path / f"result{index}.json"),
            env=dict(env(), TF_CONFIG=json.dumps(tf_config)), cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=300))
        finally:
            proc.kill()
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    multi = losses(tmp_path / "run")  # written by the chief (worker 0) only
    assert len(multi) == 2
    for (loss, val), (ref_loss, ref_val) in zip(multi, single_device):
        assert loss == pytest.approx(ref_loss, rel=1e-4)
        assert val == pytest.approx(ref_val, rel=1e-4)
    worker1 = json.loads((tmp_path / "result1.json").read_text())
    assert worker1["val_loss"] == pytest.approx(single_device[-1][1], rel=1e-4)
