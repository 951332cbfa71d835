"""Training: configs and run folders, schedules, optimizers, callbacks, pre-training."""

from kzoo.training.callbacks import NaNLossError, generate_text
from kzoo.training.checkpoints import restore_checkpoint
from kzoo.training.config import (
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from kzoo.training.distribute import get_strategy, is_chief
from kzoo.training.dpo import DPOModel, NaNGuard, compute_reference_logps, frozen_copy
from kzoo.training.kto import KTOModel, compute_unpaired_reference_logps, implied_reward_accuracy
from kzoo.training.lora import LoRAConfig, apply_lora_config
from kzoo.training.optimizers import build_adamw, no_decay_variables
from kzoo.training.pretrain import PretrainConfig, build_model, pretrain
from kzoo.training.reward import RewardModel
from kzoo.training.run_folder import RunDir, RunFolderError, open_run
from kzoo.training.schedules import WarmupSchedule
from kzoo.training.sft import compile_sft, response_nll

__all__ = [
    "DPOModel",
    "KTOModel",
    "LoRAConfig",
    "NaNGuard",
    "RewardModel",
    "compile_sft",
    "compute_reference_logps",
    "compute_unpaired_reference_logps",
    "implied_reward_accuracy",
    "frozen_copy",
    "response_nll",
    "NaNLossError",
    "PretrainConfig",
    "RunDir",
    "WarmupSchedule",
    "apply_lora_config",
    "apply_overrides",
    "build_adamw",
    "build_model",
    "config_from_dict",
    "config_to_dict",
    "generate_text",
    "get_strategy",
    "is_chief",
    "load_config",
    "no_decay_variables",
    "pretrain",
    "restore_checkpoint",
    "RunFolderError",
    "open_run",
    "save_config",
]
