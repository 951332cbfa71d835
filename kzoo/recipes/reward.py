"""Train a reward model (scalar head, Bradley-Terry loss) on preference pairs with `fit`.

    python recipes/reward.py --config recipes/configs/gpt/baby_instruction_reward.yaml
    kzoo reward --config gpt/baby_instruction_reward
    python recipes/reward.py --config CONFIG --set train.epochs=1

The run folder holds config.yaml, tokenizer/, model.keras (the `RewardModel`) and metrics.json
(per-epoch loss and pairwise accuracy, the held-out accuracy before and after, the split).
Held-out prompts are chosen as in `recipes/dpo.py` (a seeded hash of the prompt).
"""

import dataclasses
import json
import math
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kzoo._quiet import set_random_seed  # noqa: E402
from kzoo.training.config import checked  # noqa: E402
from kzoo.training.lora import LoRAConfig  # noqa: E402
from kzoo.training.recipe import (  # noqa: E402
    DivergedError,
    FineTuneData,
    FineTuneModel,
    MemoryOptions,
    load_pairs,
    pairs_result,
    run_recipe,
)


@dataclasses.dataclass
class TrainConfig(MemoryOptions):
    epochs: int = checked(2, "positive")
    batch_size: int = checked(8, "positive")
    learning_rate: float = checked(1e-4, "positive")
    verbose: int = 2
    jit_compile: bool = True
    max_loss_factor: float | None = 4.0  # stop when the loss exceeds this x its first value


@dataclasses.dataclass
class RewardConfig:
    run_dir: str = "runs/reward"
    seed: int = 0
    data: FineTuneData = dataclasses.field(default_factory=FineTuneData)
    model: FineTuneModel = dataclasses.field(default_factory=FineTuneModel)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    lora: LoRAConfig = dataclasses.field(default_factory=LoRAConfig)


def run(config: RewardConfig) -> dict:
    from kzoo.training import open_run

    with open_run(config.run_dir, "reward") as run_dir:
        return _run_in(run_dir, config)


def _run_in(run_dir, config: RewardConfig) -> dict:

    from kzoo.alignment.reward import RewardModel, reward_dataset
    from kzoo.training import NaNGuard, rerun_header, save_config
    from kzoo.training.recipe import (
        compile_for_backend,
        diverged,
        prepare_tuning,
        save_tuned,
        tuning_optimizer,
    )

    set_random_seed(config.seed)
    data = config.data
    tokenizer, backbone, train, val, counts = load_pairs(data, config.model)
    model = RewardModel(prepare_tuning(backbone, config.lora, config.train))  # head trains too
    compile_for_backend(model, config.train.jit_compile,
                        optimizer=tuning_optimizer(config.train))
    val_ds = reward_dataset(val, config.train.batch_size, shuffle=False)
    before = model.evaluate(val_ds, verbose=0, return_dict=True)
    guard = NaNGuard(model, keys=("loss",), max_loss_factor=config.train.max_loss_factor)
    history = model.fit(reward_dataset(train, config.train.batch_size, seed=config.seed),
                        validation_data=val_ds, epochs=config.train.epochs,
                        callbacks=[guard], verbose=config.train.verbose, shuffle=False)
    after = model.evaluate(val_ds, verbose=0, return_dict=True)
    if guard.stopped_at is not None:
        raise diverged(guard, "no model was saved")
    if not all(map(math.isfinite, after.values())):
        raise DivergedError(f"reward training diverged (held-out metrics {after}); "
                            "lower train.learning_rate. Nothing was saved.")
    save_config(config, run_dir.config, header=rerun_header("reward", run_dir.config))
    tokenizer.save(run_dir.tokenizer)
    save_tuned(model, run_dir.model, run_dir.root / "adapters.safetensors")
    result = pairs_result(data, train, val, counts, before, after, history)
    (run_dir.root / "metrics.json").write_text(json.dumps(result, indent=1))
    run_dir.mark("reward", "finished")
    return result


def main(argv=None) -> int:
    return run_recipe(__doc__, RewardConfig, run, argv)

if __name__ == "__main__":
    sys.exit(main())
