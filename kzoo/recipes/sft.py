"""Supervised fine-tuning (SFT) on instruction data, loss on response tokens only.

    python recipes/sft.py --config recipes/configs/gpt/baby_instruction_sft.yaml
    kzoo sft --config gpt/baby_instruction_sft
    python recipes/sft.py --config CONFIG --set train.epochs=1 --set run_dir=runs/x

The run folder holds config.yaml, tokenizer/, model.keras and metrics.json (train and held-out
response loss per epoch, the split sizes). With `lora.enabled` only low-rank adapters train
(`lora.quantize: int8` puts them on an int8 base); model.keras then holds the merged float
model and adapters.safetensors the adapters alone. The held-out prompts are chosen by a seeded
hash of the prompt (`kzoo.data.instruction.split_records`), so `recipes/dpo.py` with the same
`validation_fraction` and `split_seed` holds out the same prompts.
"""

import dataclasses
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kzoo._quiet import set_random_seed  # noqa: E402
from kzoo.training.config import checked  # noqa: E402
from kzoo.training.evaluation import EvalConfig, RecipeEval, compare  # noqa: E402
from kzoo.training.lora import LoRAConfig  # noqa: E402
from kzoo.training.recipe import (  # noqa: E402
    FineTuneData,
    FineTuneModel,
    MemoryOptions,
    run_recipe,
)


@dataclasses.dataclass
class DataConfig(FineTuneData):
    path: str = "../shared/data/instruction-data.json"


@dataclasses.dataclass
class TrainConfig(MemoryOptions):
    epochs: int = checked(3, "positive")
    batch_size: int = checked(16, "positive")
    learning_rate: float = checked(1e-3, "positive")
    weight_decay: float = checked(0.0, "non_negative")
    verbose: int = 2
    jit_compile: bool = True
    max_loss_factor: float | None = 4.0  # stop when the loss exceeds this x its first value


@dataclasses.dataclass
class SFTConfig:
    run_dir: str = "runs/sft"
    seed: int = 0
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: FineTuneModel = dataclasses.field(default_factory=FineTuneModel)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    lora: LoRAConfig = dataclasses.field(default_factory=LoRAConfig)
    # lm-eval tasks scored before and after training, into metrics.json (kzoo.training.evaluation)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)


def run(config: SFTConfig) -> dict:
    from kzoo.training import open_run

    with open_run(config.run_dir, "sft") as run_dir:
        return _run_in(run_dir, config)


def _run_in(run_dir, config: SFTConfig) -> dict:

    from kzoo.alignment.sft import SFTModel, load_tokenizer_and_model, response_nll
    from kzoo.data.instruction import (
        encode_sft,
        read_instruction_records,
        sft_dataset,
        sft_steps,
        split_records,
    )
    from kzoo.training import NaNGuard, rerun_header, save_config
    from kzoo.training.recipe import (
        compile_for_backend,
        diverged,
        prepare_tuning,
        save_tuned,
        tuning_optimizer,
    )

    set_random_seed(config.seed)
    evaluation = RecipeEval(config.eval)  # tasks and their data checked before any work
    data = config.data
    tokenizer, model = load_tokenizer_and_model(
        config.model.preset, config.model.args, config.model.init_from, config.model.tokenizer,
        data.max_length)
    records = read_instruction_records(data.path)
    train_records, val_records = split_records(records, data.validation_fraction,
                                               data.split_seed)
    encode = lambda rs: encode_sft(rs, tokenizer, data.max_length, data.template,  # noqa: E731
                                   data.max_prompt_length, data.strict)
    train, val = encode(train_records), encode(val_records)
    model = prepare_tuning(model, config.lora, config.train)
    optimizer = tuning_optimizer(config.train, weight_decay=config.train.weight_decay)
    tuner = SFTModel(model)
    compile_for_backend(tuner, config.train.jit_compile, optimizer=optimizer)
    before = response_nll(model, val)
    eval_before = evaluation.score(model, tokenizer)
    guard = NaNGuard(model, keys=("loss",), max_loss_factor=config.train.max_loss_factor)
    # Every epoch's order fixed by (seed, epoch): the same batches on every backend.
    history = tuner.fit(
        sft_dataset(train, config.train.batch_size, seed=config.seed,
                    epochs=config.train.epochs),
        steps_per_epoch=sft_steps(train, config.train.batch_size),
        validation_data=sft_dataset(val, config.train.batch_size, shuffle=False),
        epochs=config.train.epochs, verbose=config.train.verbose, shuffle=False,
        callbacks=[guard],
    )
    if guard.stopped_at is not None:
        raise diverged(guard, "no model was saved")
    save_config(config, run_dir.config, header=rerun_header("sft", run_dir.config))
    tokenizer.save(run_dir.tokenizer)
    save_tuned(model, run_dir.model, run_dir.root / "adapters.safetensors")
    result = {
        "split": {"train": len(train_records), "validation": len(val_records),
                  "validation_fraction": data.validation_fraction, "split_seed": data.split_seed,
                  "skipped_long_prompts": train["skipped"] + val["skipped"]},
        "val_response_loss_before": before,
        "val_response_loss_after": response_nll(model, val),
        "history": {k: [float(x) for x in v] for k, v in history.history.items()},
        "eval": compare(eval_before, evaluation.score(model, tokenizer)),
    }
    (run_dir.root / "metrics.json").write_text(json.dumps(result, indent=1))
    run_dir.mark("sft", "finished")
    return result


def main(argv=None) -> int:
    return run_recipe(__doc__, SFTConfig, run, argv)

if __name__ == "__main__":
    sys.exit(main())
