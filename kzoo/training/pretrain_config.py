"""The config schema of `kzoo.training.pretrain`: one dataclass per YAML section.

`PretrainConfig` holds `run_dir`, `seed`, `resume` and the sections `data` (`DataConfig`),
`tokenizer` (`TokenizerConfig`), `model` (`ModelConfig`), `train` (`TrainConfig`), `sample`
(`SampleConfig`) and `eval` (`kzoo.training.evaluation.EvalConfig`). Each field's comment says
what it does; `kzoo.training.load_config` fills them from a YAML file and `--set` overrides,
and `checked(...)` defaults refuse bad values with one line (`_validate`: the checks across
fields, which `pretrain` runs first). Every public name is re-exported by
`kzoo.training.pretrain`, where `pretrain(config)` runs them.

Example:

>>> from kzoo.training.pretrain_config import PretrainConfig
>>> PretrainConfig().train.block_size
128
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Literal

from kzoo.training.config import between, checked
from kzoo.training.evaluation import EvalConfig


@dataclasses.dataclass
class DataConfig:
    source: str = "pydocs"  # "pydocs", "pydocs+docstrings", "tfds:NAME" or a path/glob
    train_split: str = "train"  # TFDS split for training
    validation_split: str | None = None  # TFDS split for validation; None: a tail fraction
    validation_fraction: float = checked(0.1, "fraction")  # share of the stream kept for validation
    data_dir: str | None = None  # TFDS data_dir
    manual_dir: str | None = None  # TFDS manual_dir (offline copy of the raw files)
    # a folder `kzoo prepare` wrote: its shards are streamed from disk (source, splits and the
    # tokenizer section are then the folder's own)
    prepared: str | None = None
    packing: Literal["plain", "bos_aligned"] = "plain"  # bos_aligned: rows start documents
    verify: bool = True  # check the prepared shards' sha256 at start (sizes always)


@dataclasses.dataclass
class TokenizerConfig:
    kind: Literal["char", "byte", "bpe"] = "bpe"
    vocab_size: int | None = checked(None, "positive")  # bpe only
    path: str | None = None  # load a saved tokenizer folder instead of training one


@dataclasses.dataclass
class ModelConfig:
    preset: str = "gpt_nano"
    args: dict[str, Any] = dataclasses.field(default_factory=dict)  # CausalLM overrides
    init_from: str | None = None  # start from a saved .keras model


@dataclasses.dataclass
class TrainConfig:
    block_size: int = checked(128, "positive")
    batch_size: int = checked(16, "positive")  # global, over all replicas and workers
    steps: int = checked(500, "positive")
    # steps between validations, log rows, backups and samples
    eval_interval: int = checked(100, "positive")
    val_batches: int = checked(20, "positive")
    learning_rate: float = checked(1e-3, "positive")
    min_learning_rate: float = checked(1e-4, "non_negative")
    warmup_steps: int = checked(50, "non_negative")
    schedule: str = "cosine"
    weight_decay: float = checked(0.1, "non_negative")
    beta_1: float = checked(0.9, between(0, 1, high_open=True))
    beta_2: float = checked(0.99, between(0, 1, high_open=True))
    epsilon: float = checked(1e-8, "positive")
    clip_norm: float | None = checked(1.0, "positive")
    # float32, or mixed_bfloat16 (float32 variables, bfloat16 compute): kzoo.training.precision
    precision: Literal["float32", "mixed_bfloat16"] = "float32"
    dtype: Literal["float32", "mixed_bfloat16"] | None = None  # deprecated name of precision
    jit_compile: bool = True  # XLA on TensorFlow and JAX; PyTorch: kzoo's recorded step
    steps_per_execution: int = checked(1, "positive")
    # "none", "data_parallel" (= "mirrored": one replica per local device, on TensorFlow and
    # JAX), "multi_worker" (TensorFlow, TF_CONFIG), or the sharded "fsdp" / "tensor_parallel"
    # (JAX, on `mesh`); see kzoo.training.distribute
    distribution: Literal["none", "data_parallel", "mirrored", "multi_worker", "fsdp",
                          "tensor_parallel"] = "none"
    mesh: dict[str, int] | None = None  # {batch: N, model: M} for fsdp / tensor_parallel
    logical_cpus: int = checked(0, "non_negative")  # N logical CPU devices (tests, demos)
    verbose: int = 1  # Keras progress bar: 0 silent, 1 bar, 2 one line per epoch
    tensorboard: bool = True
    keep_backups: int = checked(2, "positive")  # intact checkpoints kept in backup/
    # stop, like a NaN, when a batch loss exceeds this multiple of the run's first loss
    max_loss_factor: float | None = 4.0

    def __post_init__(self):
        # Folders saved before the rename hold `dtype: float32` (the default, nothing to say);
        # a `dtype: mixed_bfloat16` is the old spelling of `precision: mixed_bfloat16`.
        if self.dtype == "mixed_bfloat16":
            print("warning: train.dtype is deprecated; it is now train.precision "
                  "(train.precision: mixed_bfloat16)", file=sys.stderr)
            self.precision = self.dtype
        self.dtype = None


@dataclasses.dataclass
class SampleConfig:
    prompt: str = ""
    max_new_tokens: int = checked(100, "non_negative")
    temperature: float = checked(0.8, "non_negative")  # 0 means greedy (argmax)
    top_k: int | None = checked(40, "positive")
    every_interval: bool = True  # also print a sample at each validation


@dataclasses.dataclass
class PretrainConfig:
    run_dir: str = "runs/pretrain"
    seed: int = 1337
    # "auto": resume when the training settings are unchanged (refuse and name the changes
    # otherwise); "override": resume under the new settings, recorded in resumes.jsonl
    resume: Literal["auto", "override"] = "auto"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    sample: SampleConfig = dataclasses.field(default_factory=SampleConfig)
    # lm-eval tasks scored at step 0 and at the end, into metrics.json
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)


def _validate(config: PretrainConfig) -> None:
    t = config.train
    for name in ("block_size", "batch_size", "steps", "eval_interval", "val_batches",
                 "steps_per_execution", "keep_backups"):
        if getattr(t, name) < 1:
            raise ValueError(f"train.{name} must be >= 1, got {getattr(t, name)}")
    if t.max_loss_factor is not None and not t.max_loss_factor > 1:
        raise ValueError(f"train.max_loss_factor must be > 1 or null, got {t.max_loss_factor}")
    if config.tokenizer.vocab_size is not None and config.tokenizer.kind != "bpe":
        raise ValueError("tokenizer.vocab_size applies to kind 'bpe' only")
