"""A trained reward model (the reward recipe's run folder) as a reward function.

The score of a completion is the `RewardModel`'s score of prompt + completion, laid out exactly
as the reward recipe trained it: the run's `config.yaml` gives `data.template`, `max_length` and
`max_prompt_length`, and the rows are built by `kzoo.data.preference.encode_pairs` (string
prompts: the template's prompt text, the completion, end-of-text; conversational prompts: the
tokenizer's chat template with the completion as the assistant turn). The end of the sequence is
always written, as in training, so a completion cut at the length limit is scored as if it had
ended (add `format_ends` to penalize that). Completions are text without the end token.

Loading reads only data: the `.keras` file in Keras safe mode, the tokenizer's JSON, the YAML
config with a safe loader.

Example:
```python
from kzoo.alignment.reward_scoring import RewardModelScorer
score = RewardModelScorer("runs/reward")
score(prompts=["2+2="], completions=["4"])   # [0.73]
```
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides a tokenizer's ids: its class, vocabulary size, end id,
    saved config, the full `tokenizers` model when it wraps one (BPE, Hugging Face) and its
    chat template.

    Example:
    ```python
    from kzoo.tokenizers import ByteTokenizer, CharTokenizer
    tokenizer_fingerprint(ByteTokenizer()) == tokenizer_fingerprint(CharTokenizer("ab"))  # False
    ```
    """
    inner = getattr(tokenizer, "_tok", None)
    described = {
        "class": f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}",
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "config": tokenizer.get_config(),
        "model": inner.to_str() if hasattr(inner, "to_str") else None,
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    text = json.dumps(described, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def describe_tokenizer(tokenizer) -> str:
    """`kind, vocab_size=N, fingerprint XXXXXXXXXXXX`: a tokenizer in an error message."""
    return (f"{getattr(tokenizer, 'kind', type(tokenizer).__name__)}, vocab_size="
            f"{tokenizer.vocab_size}, fingerprint {tokenizer_fingerprint(tokenizer)[:12]}")


def check_same_tokenizer(reward_tokenizer, policy_tokenizer, folder) -> None:
    """Refuse a reward model whose tokenizer is not the policy's, naming both in one line.

    Example:
    ```python
    from kzoo.tokenizers import ByteTokenizer
    check_same_tokenizer(ByteTokenizer(), ByteTokenizer(), "runs/reward")   # passes
    ```
    """
    if tokenizer_fingerprint(reward_tokenizer) != tokenizer_fingerprint(policy_tokenizer):
        raise ValueError(
            f"reward model {folder}: its tokenizer ({describe_tokenizer(reward_tokenizer)}) "
            f"does not match the policy's ({describe_tokenizer(policy_tokenizer)}); train the "
            "reward model with the policy's tokenizer")


def check_reward_run(folder: Path, spec: str) -> None:
    """Refuse a folder that is not a finished run of the reward recipe, naming it and why.

    Example:
    ```python
    check_reward_run(Path("runs/reward"), "runs/reward")
    ```
    """
    from kzoo.training.run_folder import RunDir

    run = RunDir(folder)
    if not any(p.exists() for p in (run.marker, run.model, run.config, run.tokenizer)):
        raise ValueError(f"reward {spec!r} is a folder but not a kzoo run folder (no "
                         "kzoo-run.json, model.keras, config.yaml or tokenizer/)")
    recipe = run.recipe()
    if recipe not in (None, "reward"):
        raise ValueError(f"reward {spec!r}: the run folder was made by the {recipe} recipe, "
                         "not the reward recipe (recipes/reward.py)")
    for path in (run.config, run.tokenizer, run.model):
        if not path.exists():
            raise ValueError(f"reward {spec!r}: the reward-model run folder has no "
                             f"{path.name} (train it with recipes/reward.py first)")


class RewardModelScorer:
    """Score (prompt, completion) pairs with a reward recipe's run folder.

    Args:
        folder: str | Path. the run folder (config.yaml, tokenizer/, model.keras).
        batch_size: int. rows scored per forward pass.

    Call: `scorer(prompts, completions, **ignored) -> list[float]`, TRL's reward signature.

    Example:
    ```python
    scorer = RewardModelScorer("runs/reward")
    ids, lengths = scorer.encode(["Say hi."], ["Hi!"])   # (1, max_length), (1,)
    ```
    """

    def __init__(self, folder, batch_size: int = 32, spec: str | None = None):
        from kzoo.alignment.reward import RewardModel
        from kzoo.models.loading import load_model_file
        from kzoo.tokenizers import check_vocab, load_tokenizer
        from kzoo.training.config import config_from_dict, read_yaml
        from kzoo.training.recipe import FineTuneData

        self.folder = Path(folder)
        spec = str(folder) if spec is None else spec
        check_reward_run(self.folder, spec)
        config = read_yaml(self.folder / "config.yaml")
        if not isinstance(config, dict):
            raise ValueError(f"{self.folder / 'config.yaml'}: expected a mapping, got "
                             f"{type(config).__name__}")
        # Only the data layout matters here; the other sections belong to the recipe.
        self.data = config_from_dict(config.get("data") or {}, FineTuneData,
                                     str(self.folder / "config.yaml"))
        self.tokenizer = load_tokenizer(self.folder / "tokenizer")
        self.model = load_model_file(self.folder / "model.keras", compile=False,
                                     expect=RewardModel)
        check_vocab(self.tokenizer, self.model.backbone.vocab_size,
                    where=str(self.folder / "model.keras"))
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}")
        self.batch_size = int(batch_size)
        self.__name__ = self.folder.resolve().name

    def encode(self, prompts: list, completions: list) -> tuple[np.ndarray, np.ndarray]:
        """Rows as the reward recipe built them: int32 ids (n, max_length), lengths (n,).

        Raises:
            ValueError: naming the completion whose prompt leaves no room in max_length, or a
                string prompt with a conversational completion.
        """
        from kzoo.data.preference import encode_pairs

        records = []
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            if isinstance(prompt, list):
                response = (completion if isinstance(completion, list)
                            else [{"role": "assistant", "content": completion}])
            elif isinstance(completion, list):
                raise ValueError(f"completion {i} is a list of messages but its prompt is a "
                                 "string; give both as text or both as messages")
            else:
                response = completion
            # encode_pairs builds rows in pairs; the completion fills both sides, one is kept.
            records.append({"prompt": prompt, "chosen": response, "rejected": response})
        data = self.data
        try:
            arrays = encode_pairs(records, self.tokenizer, data.max_length, data.template,
                                  data.max_prompt_length, strict=True)
        except ValueError as error:  # "pair i: ..." -- here a pair is one completion
            text = str(error).replace("pair ", "completion ", 1)
            raise ValueError(f"reward model {self.folder}: {text}") from None
        return arrays["token_ids"][:, 0], arrays["lengths"][:, 0]

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        from keras import ops

        ids, lengths = self.encode(prompts, completions)
        scores = []
        for start in range(0, len(ids), self.batch_size):
            batch = slice(start, start + self.batch_size)
            rows, length = ids[batch], lengths[batch]
            # Right padding after the longest row changes nothing before it (causal attention),
            # so the batch is cut there: (rows, max_length) -> (rows, longest).
            rows = rows[:, : int(length.max())]
            scores.append(ops.convert_to_numpy(self.model.score(rows, length)))
        return np.concatenate(scores).astype(np.float32).tolist() if scores else []
