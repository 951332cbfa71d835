"""What `test_backends.py` runs on each Keras backend: pre-training (a run, its resume, more
steps, the NaN stop, a strategy the backend lacks), JAX data parallel, and SFT, all from
weights saved on TensorFlow.

The parent (pytest, TensorFlow) writes the inputs (`write_inputs`) and makes its own reference
runs with `pretrain_config` / `sft_args`; a child process
(`python -m tests.training.backend_checks WORKDIR OUT MODES`, KERAS_BACKEND set) runs `main`,
which runs the modes one after the other, writes its findings into OUT (JSON) and leaves its run
folders in WORKDIR/<backend>_<mode>/ for the parent to read.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recipes/configs/gpt/nano_pydocs_pretrain.yaml"
SFT_CONFIG = ROOT / "recipes/configs/gpt/baby_instruction_sft.yaml"
STEPS, INTERVAL = 4, 2
# Byte tokenizer: no tokenizer training, and the same ids on every backend.
SETTINGS = [
    "data.validation_fraction=0.2", "tokenizer.kind=byte", "tokenizer.vocab_size=null",
    "train.block_size=16", "train.batch_size=4", f"train.steps={STEPS}",
    f"train.eval_interval={INTERVAL}", "train.val_batches=2", "train.warmup_steps=1",
    "train.verbose=0", "train.tensorboard=false",
    "train.jit_compile=true", "sample.max_new_tokens=4", "sample.every_interval=false",
]
SFT_SETTINGS = ["model.tokenizer=byte", "data.template=plain", "data.max_length=48",
                "data.validation_fraction=0.25", "train.verbose=0", "train.epochs=1",
                "train.batch_size=4"]


def write_inputs(workdir: Path, instruction_data: Path | None = None) -> None:
    """The inputs every backend starts from, made on TensorFlow: `init.keras` (a 2-layer
    gpt_nano for the byte tokenizer), `corpus.txt` (20 KB of the pydocs corpus), and for SFT
    `sft_init.keras` and `sft.json` (the first 24 records of `instruction_data`)."""
    import keras

    from kzoo.data import pydocs_documents
    from kzoo.models import CausalLM
    from kzoo.tokenizers import train_tokenizer

    vocab = train_tokenizer("byte", ["x"]).vocab_size
    keras.utils.set_random_seed(0)
    for name, args in (("init", {}), ("sft_init", {"num_layers": 1, "max_sequence_length": 48})):
        model = CausalLM.from_preset("gpt_nano", **{"vocab_size": vocab, "dropout": 0.0,
                                                    "max_sequence_length": 32, **args})
        model(keras.ops.zeros((1, 4), "int32"))
        model.save(workdir / f"{name}.keras")
    (workdir / "corpus.txt").write_text("\n\n".join(pydocs_documents())[:20_000])
    # The same text prepared (kzoo prepare), one paragraph a document: a streamed corpus
    paragraphs = (workdir / "corpus.txt").read_text().split("\n\n")
    (workdir / "corpus.jsonl").write_text("".join(json.dumps({"text": p}) + "\n"
                                                  for p in paragraphs if p.strip()))
    from kzoo.data.prepare import prepare

    prepare([str(workdir / "corpus.jsonl")], workdir / "prepared", tokenizer="byte",
            shard_tokens=4096, validation_fraction=0.2, progress=False)
    if instruction_data is not None:
        records = json.loads(Path(instruction_data).read_text())[:24]
        (workdir / "sft.json").write_text(json.dumps(records))


def pretrain_config(run_dir, init, *extra):
    """The tiny pre-training config, starting from the model file `init` on the corpus
    beside it (`write_inputs`)."""
    from kzoo.training import PretrainConfig, load_config

    corpus = Path(init).parent / "corpus.txt"
    return load_config(DEMO, PretrainConfig,
                       [*SETTINGS, f"data.source={corpus}", f"model.init_from={init}",
                        f"run_dir={run_dir}", *extra])


def sft_args(run_dir, init, data, *extra) -> list[str]:
    """The command line of the tiny SFT run."""
    sets = [*SFT_SETTINGS, f"model.init_from={init}", f"data.path={data}", f"run_dir={run_dir}",
            *extra]
    return ["--config", str(SFT_CONFIG), *sum((["--set", s] for s in sets), [])]


def rows(run_dir) -> list[dict]:
    """metrics.csv as floats."""
    with (Path(run_dir) / "metrics.csv").open(newline="") as f:
        return [{k: float(v) for k, v in r.items() if v not in ("", None)}
                for r in csv.DictReader(f)]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pretrain_checks(work: Path, init: Path, backend: str) -> dict:
    from kzoo.training import NaNLossError, pretrain
    from kzoo.training.distribute import get_strategy

    out = {}
    run = work / "run"
    out["run"] = pretrain(pretrain_config(run, init))
    out["run_rows"] = rows(run)
    out["run_files"] = sorted(p.name for p in run.iterdir())
    out["marker"] = json.loads((run / "kzoo-run.json").read_text())

    # A crash after step 2: its backup is the newest; the same command resumes there.
    resumed = work / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "backup" / f"step-{STEPS:07d}")
    (resumed / "backup/LATEST").write_text(f"step-{INTERVAL:07d}")
    out["resumed"] = pretrain(pretrain_config(resumed, init))
    out["resumed_rows"] = rows(resumed)
    out["resumes"] = [json.loads(line) for line in (resumed / "resumes.jsonl").open()]

    # A finished run, continued for more steps.
    more = work / "more"
    shutil.copytree(run, more)
    out["more"] = pretrain(pretrain_config(more, init, f"train.steps={STEPS + INTERVAL}",
                                           "resume=override"))
    out["more_rows"] = rows(more)

    # A huge learning rate: the loss turns NaN; the last good checkpoint stays untouched.
    nan = work / "nan"
    shutil.copytree(run, nan)
    weights = nan / "backup" / f"step-{STEPS:07d}" / "ckpt.weights.h5"
    before = _sha(weights)
    try:
        pretrain(pretrain_config(nan, init, f"train.steps={STEPS + 2 * INTERVAL}",
                                 "train.learning_rate=1e38", "train.warmup_steps=0",
                                 "train.clip_norm=null", "train.max_loss_factor=null",
                                 "resume=override"))
        out["nan_error"] = None
    except NaNLossError as error:
        out["nan_error"] = str(error)
    out["nan_latest"] = (nan / "backup/LATEST").read_text()
    out["nan_weights_unchanged"] = _sha(weights) == before
    out["nan_backups"] = sorted(p.name for p in (nan / "backup").glob("step-*"))

    # A strategy this backend does not have: one line naming the valid ones, no folder left.
    out["strategies"] = {}
    for name in ("data_parallel", "mirrored", "multi_worker"):
        try:
            out["strategies"][name] = repr(get_strategy(name))
        except ValueError as error:
            out["strategies"][name] = f"ValueError: {error}"
    refused = work / "refused"
    try:
        pretrain(pretrain_config(refused, init, "train.distribution=multi_worker"))
        out["refused"] = None
    except ValueError as error:
        out["refused"] = str(error)
    out["refused_left_folder"] = refused.exists()

    # The prepared folder's memory-mapped shards through tf.data's numpy_function.
    pretrain(prepared_config(work / "prepared_run", init))
    out["prepared_rows"] = rows(work / "prepared_run")
    return out


def prepared_config(run_dir, init, *extra):
    """`pretrain_config` on the prepared folder beside `init` (`write_inputs`)."""
    return pretrain_config(run_dir, init, f"data.prepared={Path(init).parent / 'prepared'}",
                           *extra)


def _parallel_checks(work: Path, init: Path) -> dict:
    """JAX, started with two host devices: the run above under `data_parallel`."""
    import jax
    import keras

    from kzoo.training import pretrain
    from kzoo.training.distribute import get_strategy

    strategy = get_strategy("data_parallel")
    with strategy.scope():
        variable = keras.Variable(keras.ops.zeros((4, 2)))
    out = {"devices": len(jax.devices()), "replicas": strategy.num_replicas_in_sync,
           "variable_devices": len(variable.value.sharding.device_set)}
    parallel = work / "parallel"
    out["parallel"] = pretrain(pretrain_config(parallel, init, "train.distribution=data_parallel"))
    out["parallel_rows"] = rows(parallel)
    try:
        pretrain(pretrain_config(work / "odd", init, "train.distribution=data_parallel",
                                 "train.batch_size=3"))
        out["odd_batch"] = None
    except ValueError as error:
        out["odd_batch"] = str(error)
    return out


def _sft_checks(work: Path, init: Path, data: Path) -> dict:
    from kzoo.recipes import sft

    out = {"sft_code": sft.main(sft_args(work / "sft", init, data))}
    if out["sft_code"] == 0:
        out["sft_metrics"] = json.loads((work / "sft/metrics.json").read_text())
    out["sft_nan_code"] = sft.main(sft_args(work / "sft_nan", init, data,
                                            "train.learning_rate=1e30"))
    out["sft_nan_model"] = (work / "sft_nan/model.keras").exists()
    return out


MODES = ("pretrain", "parallel", "sft")


def main(argv) -> int:
    """argv: WORKDIR OUT MODES, MODES comma-separated names from `MODES`, run in that order in
    this one process (imports and compiles are most of a child's time); `parallel` wants a
    process of its own, started with two JAX host devices."""
    workdir, out_path, modes = Path(argv[0]), Path(argv[1]), argv[2].split(",")
    if not modes or any(m not in MODES for m in modes):
        raise ValueError(f"MODES must be comma-separated names from {list(MODES)}, got {argv[2]!r}")
    began = time.perf_counter()
    import keras

    import kzoo.data  # noqa: F401
    import kzoo.recipes.pretrain  # noqa: F401
    import kzoo.recipes.sft  # noqa: F401
    import kzoo.training  # noqa: F401

    backend = keras.backend.backend()
    out = {"backend": backend, "modes": modes, "seconds": {},
           "tf_at_import": sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow")}
    for mode in modes:
        started = time.perf_counter()
        work = workdir / f"{backend}_{mode}"
        work.mkdir()
        if mode == "pretrain":
            out.update(_pretrain_checks(work, workdir / "init.keras", backend))
        elif mode == "parallel":
            out.update(_parallel_checks(work, workdir / "init.keras"))
        else:
            out.update(_sft_checks(work, workdir / "sft_init.keras", workdir / "sft.json"))
        out["seconds"][mode] = time.perf_counter() - started
    out["tf_after_data"] = "tensorflow" in sys.modules  # tf.data is the input path
    out["seconds"]["total"] = time.perf_counter() - began
    out_path.write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
