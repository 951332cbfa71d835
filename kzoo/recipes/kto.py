"""KTO on unpaired thumbs up / down feedback, usually after SFT.

    python recipes/kto.py --config recipes/configs/gpt/baby_instruction_kto.yaml
    kzoo kto --config gpt/baby_instruction_kto
    python recipes/kto.py --config CONFIG --set kto.undesirable_weight=1.33

The data is a file of `{prompt, completion, label}` records (`data.unpair: false`) or of
preference pairs that the recipe unpairs (`data.unpair: true`: chosen = up, rejected = down,
shuffled), after splitting the pairs by prompt exactly as the DPO recipe does. Each training
batch's KL rows are its completions shifted by one under the batch's prompts
(`kzoo.data.unpaired.with_kl_rows`); batches keep one order across epochs, as TRL's
sequential sampling. The reference is the starting model, as in `recipes/dpo.py`: log-probs
computed once (`kto.reference: precomputed`), a frozen copy (`copy`), or with `lora.enabled`
the network with its adapters skipped (`adapters_off`, the default then).

The run folder holds config.yaml, tokenizer/, model.keras, policy.weights.h5 (the last good
weights), metrics.csv (one row per `train.eval_interval` steps) and metrics.json: the split,
label and bad-record counts, the held-out KTO metrics before and after, and the held-out
implied-reward accuracy (beta * log-ratio of chosen above rejected, on the held-out pairs, as
DPO's `rewards/accuracy`). A NaN or exploding loss stops training and keeps the last good
weights (exit status 3).
"""

import dataclasses
import json
import os
import sys
import warnings

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kzoo._quiet import set_random_seed  # noqa: E402
from kzoo.training.config import checked  # noqa: E402
from kzoo.training.evaluation import EvalConfig, RecipeEval, compare  # noqa: E402
from kzoo.training.lora import LoRAConfig  # noqa: E402
from kzoo.training.recipe import (  # noqa: E402
    REFERENCE_MODES,
    DivergedError,
    FineTuneData,
    FineTuneModel,
    PreferenceTrainConfig,
    reference_mode,
    run_recipe,
)


@dataclasses.dataclass
class KTOData(FineTuneData):
    # true: the file holds chosen/rejected pairs, unpaired after the split; false: a file of
    # {prompt, completion, label} records
    unpair: bool = True


@dataclasses.dataclass
class KTOSection:
    loss_type: str = "kto"  # or "apo_zero_unpaired" (no KL reference point)
    beta: float = checked(0.1, "positive")
    desirable_weight: float = checked(1.0, "positive")
    undesirable_weight: float = checked(1.0, "positive")
    # "auto": "adapters_off" with lora.enabled, else "precomputed"; or "copy"
    reference: str = "auto"


TrainConfig = PreferenceTrainConfig  # the older name; batch_size >= 2 for the KL rows


@dataclasses.dataclass
class KTOConfig:
    run_dir: str = "runs/kto"
    seed: int = 0
    data: KTOData = dataclasses.field(default_factory=KTOData)
    model: FineTuneModel = dataclasses.field(default_factory=FineTuneModel)
    kto: KTOSection = dataclasses.field(default_factory=KTOSection)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    lora: LoRAConfig = dataclasses.field(default_factory=LoRAConfig)
    # lm-eval tasks scored before and after training, into metrics.json (kzoo.training.evaluation)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)


REFERENCES = REFERENCE_MODES  # the older name


def run(config: KTOConfig) -> dict:
    from kzoo.losses.kto import uses_kl
    from kzoo.training import open_run

    kto = config.kto
    kl = uses_kl(kto.loss_type)  # fails before any work on an unknown name
    reference_mode("kto", kto.reference, config.lora.enabled)
    if kl and config.train.batch_size < 2:
        raise ValueError(
            f"train.batch_size={config.train.batch_size}: KTO's KL estimate pairs each "
            "completion with another prompt of its batch; set train.batch_size >= 2, or "
            "kto.loss_type=apo_zero_unpaired (no KL term)")
    with open_run(config.run_dir, "kto") as run_dir:
        return _run_in(run_dir, config)


def load_unpaired(data: KTOData, seed: int):
    """(train records, held-out records, held-out pairs, counts) of the `data:` section."""
    from kzoo.data.instruction import split_records
    from kzoo.data.preference import read_preference_records
    from kzoo.data.unpaired import label_counts, pair_up, read_unpaired_records, unpair

    if data.unpair:
        pairs, counts = read_preference_records(data.path, strict=data.strict)
        train_pairs, val_pairs = split_records(pairs, data.validation_fraction, data.split_seed)
        train, val = unpair(train_pairs, seed), unpair(val_pairs, seed)
        counts = {**counts, "unpaired": True}
    else:
        records, counts = read_unpaired_records(data.path, strict=data.strict)
        train, val = split_records(records, data.validation_fraction, data.split_seed)
        val_pairs = pair_up(val)
    counts["train_labels"] = label_counts(train)
    return train, val, val_pairs, counts


def _encode(config: KTOConfig, tokenizer, train, val, val_pairs):
    from kzoo.data.preference import encode_pairs
    from kzoo.data.unpaired import encode_unpaired, with_kl_rows

    data, size = config.data, config.train.batch_size
    train, val = (encode_unpaired(rs, tokenizer, data.max_length, data.template,
                                  data.max_prompt_length, data.strict) for rs in (train, val))
    why = (f"the prompt leaves no room for a completion in max_length={data.max_length} (set "
           "data.max_prompt_length or raise data.max_length)")
    for part, arrays in (("training", train), ("validation", val)):
        if len(arrays["token_ids"]) < 2:
            raise ValueError(f"{data.path}: {len(arrays['token_ids'])} {part} record(s) left "
                             f"({arrays['skipped']} skipped: {why}); KTO needs at least 2; "
                             "add data or change data.validation_fraction")
    pairs = None
    if val_pairs:
        pairs = encode_pairs(val_pairs, tokenizer, data.max_length, data.template,
                             data.max_prompt_length)
        pairs = pairs if len(pairs["token_ids"]) else None
    if config.kto.loss_type == "apo_zero_unpaired":
        return train, val, pairs
    return (with_kl_rows(train, size, config.seed), with_kl_rows(val, size, None), pairs)


def _held_out(model, val_ds, policy, reference, pairs, beta, batch_size) -> dict:
    from kzoo.alignment.kto import implied_reward_accuracy

    result = {k: float(v) for k, v in model.evaluate(val_ds, verbose=0,
                                                     return_dict=True).items()}
    if pairs is not None:
        accuracy = implied_reward_accuracy(policy, reference, pairs, beta, batch_size)
        result.update({f"pairs/{k}": v for k, v in accuracy.items()})
    return result


def _run_in(run_dir, config: KTOConfig) -> dict:
    import keras

    from kzoo.alignment.dpo import compute_reference_logps, frozen_copy
    from kzoo.alignment.kto import KTOModel, compute_unpaired_reference_logps
    from kzoo.alignment.sft import load_tokenizer_and_model
    from kzoo.data.unpaired import unpaired_dataset
    from kzoo.losses.kto import weight_advice
    from kzoo.training import rerun_header, save_config
    from kzoo.training.recipe import (
        compile_for_backend,
        finish_tuning,
        fit_in_intervals,
        prepare_tuning,
        tuning_guard,
        tuning_optimizer,
    )

    set_random_seed(config.seed)
    evaluation = RecipeEval(config.eval)  # tasks and their data checked before any work
    data, kto, train_cfg = config.data, config.kto, config.train
    tokenizer, policy = load_tokenizer_and_model(
        config.model.preset, config.model.args, config.model.init_from, config.model.tokenizer,
        data.max_length)
    train_records, val_records, val_pairs, counts = load_unpaired(data, config.seed)
    train, val, pairs = _encode(config, tokenizer, train_records, val_records, val_pairs)
    labels = counts["train_labels"]
    advice = weight_advice(labels["desirable"], labels["undesirable"], kto.desirable_weight,
                           kto.undesirable_weight)
    if advice:
        warnings.warn(f"{data.path}: {advice}", UserWarning, stacklevel=2)
    mode = reference_mode("kto", kto.reference, config.lora.enabled)
    reference = frozen_copy(policy) if mode == "copy" else None
    policy = prepare_tuning(policy, config.lora, train_cfg)
    if mode == "adapters_off":
        reference = "adapters_off"
    elif mode == "precomputed":  # at step 0 the policy is the reference: score rows once
        for arrays in (train, val):
            arrays.update(compute_unpaired_reference_logps(policy, arrays, train_cfg.batch_size))
        if pairs is not None:
            pairs["reference_logps"] = compute_reference_logps(policy, pairs,
                                                               train_cfg.batch_size)
    model = KTOModel(policy, reference, loss=kto.loss_type, beta=kto.beta,
                     desirable_weight=kto.desirable_weight,
                     undesirable_weight=kto.undesirable_weight)
    compile_for_backend(model, train_cfg.jit_compile,
                        optimizer=tuning_optimizer(train_cfg, keras.optimizers.Adam))
    val_ds = unpaired_dataset(val, train_cfg.batch_size)
    held_out = (model, val_ds, policy, reference, pairs, kto.beta, train_cfg.batch_size)
    before = _held_out(*held_out)
    eval_before = evaluation.score(policy, tokenizer)
    guard = tuning_guard(policy, run_dir, train_cfg)
    history = fit_in_intervals(model, unpaired_dataset(train, train_cfg.batch_size), val_ds,
                               len(train["token_ids"]), train_cfg, guard, run_dir.metrics)
    after = _held_out(*held_out)
    save_config(config, run_dir.config, header=rerun_header("kto", run_dir.config))
    tokenizer.save(run_dir.tokenizer)
    result = {
        "split": {"train_records": len(train["token_ids"]),
                  "validation_records": len(val["token_ids"]),
                  "validation_pairs": 0 if pairs is None else len(pairs["token_ids"]),
                  "validation_fraction": data.validation_fraction,
                  "split_seed": data.split_seed},
        "data": {**counts, "prompt_too_long": train["skipped"] + val["skipped"]},
        "weight_advice": advice,
        "held_out_before": before,
        "held_out_after": after,
        "history": {k: [float(x) for x in v] for k, v in history.history.items()},
        "stopped_on_nan": guard.stopped_at,
        "eval": compare(eval_before, evaluation.score(policy, tokenizer)),
    }
    (run_dir.root / "metrics.json").write_text(json.dumps(result, indent=1))
    finish_tuning(run_dir, "kto", guard, policy)
    return result


def main(argv=None) -> int:
    return run_recipe(__doc__, KTOConfig, run, argv, example="kto.beta=0.2",
                      fatal=(DivergedError,))


if __name__ == "__main__":
    sys.exit(main())
