"""Training: the run machinery every recipe shares (configs, run folders, checkpoints, resume,
callbacks and guards, schedules, optimizers, distribution) and pre-training.

The alignment algorithms built on it (SFT, DPO, reward, KTO, GRPO, RLOO) are in `kzoo.alignment`.
"""

from kzoo.training.callbacks import NaNLossError, generate_text
from kzoo.training.checkpoints import restore_checkpoint
from kzoo.training.config import (
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    rerun_header,
    save_config,
)
from kzoo.training.distribute import get_strategy, is_chief
from kzoo.training.guard import NaNGuard
from kzoo.training.lora import LoRAConfig, apply_lora_config
from kzoo.training.optimizers import build_adamw, no_decay_variables
from kzoo.training.pretrain import PretrainConfig, build_model, pretrain
from kzoo.training.run_folder import RunDir, RunFolderError, open_run
from kzoo.training.schedules import WarmupSchedule

__all__ = [
    "LoRAConfig",
    "NaNGuard",
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
    "rerun_header",
    "save_config",
]
