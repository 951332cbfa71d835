"""The recipe registry: every `kzoo` recipe command, the module that runs it and its configs.

One table, read by `kzoo --help`, `kzoo ls`, `kzoo cp`, `--config NAME` and the dispatch in
`kzoo.cli.main`. A recipe is a command only when it is listed here, and a YAML file under
`kzoo/recipes/configs/` is shipped only when a recipe here lists it (tests/recipes check both
ways). Adding a recipe: write `kzoo/recipes/<module>.py` with `main(argv) -> int`, put its
configs under `configs/<family>/`, and add one `Recipe(...)` line below. Nothing here imports
TensorFlow or the recipe modules.

Example:
```python
from kzoo.recipes.registry import get_recipe, shipped_configs
get_recipe("feedback-loop").module            # 'kzoo.recipes.feedback_loop'
shipped_configs()["gpt/nano_pydocs_pretrain"]  # Path('.../configs/gpt/nano_pydocs_pretrain.yaml')
```
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class Recipe:
    """One `kzoo` recipe command.

    Args:
        command: str. what follows `kzoo` (`feedback-loop`).
        module: str. the module whose `main(argv) -> int` runs it (`kzoo.recipes.feedback_loop`).
        configs: tuple[str, ...]. the shipped configs it runs, as `family/stem` names, each a
            file `CONFIGS_DIR/<name>.yaml`; empty for a recipe run by positional arguments.
        summary: str. one line for `kzoo --help` (the module docstring's first line).

    Example:
    ```python
    Recipe("pretrain", "kzoo.recipes.pretrain", ("gpt/nano_pydocs_pretrain",), "Pre-train.")
    ```
    """

    command: str
    module: str
    configs: tuple[str, ...]
    summary: str

    @property
    def name(self) -> str:
        """The module's own name (`feedback_loop`): the run-folder marker's recipe name."""
        return self.module.rpartition(".")[2]


RECIPES = (
    Recipe("dpo", "kzoo.recipes.dpo",
           ("gpt/baby_instruction_dpo", "gpt/baby_instruction_lora_dpo", "gpt/nano_preference_dpo"),
           "Direct preference optimisation (DPO family) on preference pairs, usually after SFT."),
    Recipe("export-hf", "kzoo.recipes.export_hf", (),
           "Write a run's model (and tokenizer) as a Hugging Face folder transformers loads."),
    Recipe("feedback-loop", "kzoo.recipes.feedback_loop", ("gpt/nano_arithmetic_dpo",),
           "The feedback loop in miniature: pre-train, sample, rate, DPO, measure -- on a CPU."),
    Recipe("generate", "kzoo.recipes.generate",
           ("gpt/baby_shakespeare_char_generate", "llama/baby_shakespeare_char_generate"),
           "Generate text from a run folder or a real model, streamed, or show the next-word "
           "odds."),
    Recipe("grpo", "kzoo.recipes.grpo", ("gpt/baby_instruction_grpo",),
           "GRPO: on-policy RL from rewards, with G sampled completions per prompt as the "
           "baseline."),
    Recipe("kto", "kzoo.recipes.kto", ("gpt/baby_instruction_kto",),
           "KTO on unpaired thumbs up / down feedback, usually after SFT."),
    Recipe("orpo", "kzoo.recipes.orpo", ("gpt/baby_instruction_orpo",),
           "ORPO: odds-ratio preference optimisation on pairs, with no reference model."),
    Recipe("pretrain", "kzoo.recipes.pretrain",
           ("gpt/baby_shakespeare_char_pretrain", "gpt/nano_pydocs_pretrain",
            "llama/baby_shakespeare_char_pretrain"),
           "Pre-train a kzoo model for next-token prediction."),
    Recipe("reward", "kzoo.recipes.reward", ("gpt/baby_instruction_reward",),
           "Train a reward model (scalar head, Bradley-Terry loss) on preference pairs with "
           "`fit`."),
    Recipe("rloo", "kzoo.recipes.rloo", ("gpt/baby_instruction_rloo",),
           "RLOO: REINFORCE with a leave-one-out baseline over G sampled completions per prompt."),
    Recipe("sft", "kzoo.recipes.sft", ("gpt/baby_instruction_sft",),
           "Supervised fine-tuning (SFT) on instruction data, loss on response tokens only."),
)


def recipes() -> dict[str, Recipe]:
    """The registered recipes by command, in the table's order.

    Example:
    ```python
    list(recipes())[:2]   # ['dpo', 'export-hf']
    ```
    """
    return {recipe.command: recipe for recipe in RECIPES}


def _close(value: str, names) -> str:
    near = difflib.get_close_matches(value, list(names), n=3, cutoff=0.6)
    return f"did you mean {', '.join(near)}? " if near else ""


def get_recipe(command: str) -> Recipe:
    """The recipe a command names; `feedback_loop` (the module's spelling) is `feedback-loop`.

    Args:
        command: str. a recipe command or module name.

    Raises:
        ValueError: one line naming the close commands and all of them.

    Example:
    ```python
    get_recipe("export_hf").command   # 'export-hf'
    ```
    """
    table = recipes()
    found = table.get(command.replace("_", "-"))
    if found is None:
        raise ValueError(f"unknown recipe {command!r}; {_close(command, table)}"
                         f"the recipes: {', '.join(table)}")
    return found


def shipped_configs() -> dict[str, Path]:
    """Every registered config: name (`family/stem`) -> its YAML file, sorted by name.

    Example:
    ```python
    shipped_configs()["gpt/nano_pydocs_pretrain"].name   # 'nano_pydocs_pretrain.yaml'
    ```
    """
    names = (name for recipe in RECIPES for name in recipe.configs)
    return {name: CONFIGS_DIR / f"{name}.yaml" for name in sorted(names)}


def recipe_of_config(name: str) -> Recipe | None:
    """The recipe a shipped config belongs to, or None for a name no recipe lists.

    Example:
    ```python
    recipe_of_config("gpt/nano_arithmetic_dpo").command   # 'feedback-loop'
    ```
    """
    return next((recipe for recipe in RECIPES if name in recipe.configs), None)


def close_configs(name: str) -> str:
    """`did you mean A, B? ` for the shipped config names close to `name` ('' when none is)."""
    return _close(name, shipped_configs())

