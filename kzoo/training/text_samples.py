"""Text samples during pre-training: `generate_text` samples a continuation with the compiled,
KV-cached generator, and `PrintSample` prints one at every interval's end (none once the
`TrainingGuard` tripped).

Example:
```python
from kzoo.models import CausalLM
from kzoo.tokenizers import ByteTokenizer
from kzoo.training.text_samples import generate_text
model = CausalLM.from_preset("gpt_nano", vocab_size=257, max_sequence_length=32)
generate_text(model, ByteTokenizer(), "To be", max_new_tokens=8)   # "To be" + 8 tokens
```
"""

from __future__ import annotations

import keras

from kzoo.training.divergence import TrainingGuard, _finite, global_step


def generate_text(model, tokenizer, prompt: str, max_new_tokens: int = 100,
                  temperature: float = 0.8, top_k: int | None = 40, seed: int = 0) -> str:
    """Sample a continuation of `prompt` with the compiled, KV-cached generator.

    Compiled once per shape bucket, so a sample at every interval costs a few milliseconds
    a token after the first.

    Args:
        model: kzoo CausalLM. the model.
        tokenizer: kzoo Tokenizer. encodes the prompt, decodes the result.
        prompt: str. start text (empty: start from the end-of-text token).
        max_new_tokens: int. tokens to add (clipped to the model's positions).
        temperature: float. 0 means greedy.
        top_k: int | None. sample among the k most likely tokens.
        seed: int. sampling seed.
    """
    from kzoo import samplers

    ids = [int(i) for i in tokenizer.encode(prompt)] or [tokenizer.eot_id]
    ids = ids[-(model.max_sequence_length - 1):]
    new = max(0, min(max_new_tokens, model.max_sequence_length - len(ids)))
    if new == 0:
        return prompt
    if temperature <= 0:
        sampler = "greedy"
    elif top_k:
        sampler = samplers.serialize(samplers.get("top_k", k=top_k, temperature=temperature))
    else:
        sampler = samplers.serialize(samplers.get("random", temperature=temperature))
    result = model.generate([ids], max_new_tokens=new, sampler=sampler, seed=seed)
    return prompt + tokenizer.decode(result.token_ids[0])


class PrintSample(keras.callbacks.Callback):
    """Print a short generated sample at the end of every epoch (validation interval).

    Args:
        tokenizer: kzoo Tokenizer. for the prompt and the output.
        prompt: str. start text.
        max_new_tokens: int. tokens to generate.
        temperature: float. sampling temperature.
        top_k: int | None. top-k filter.
        guard: TrainingGuard | None. no sample once it tripped.
        enabled: bool. False on non-chief workers.
    """

    def __init__(self, tokenizer, prompt: str, max_new_tokens: int = 80,
                 temperature: float = 0.8, top_k: int | None = 40,
                 guard: TrainingGuard | None = None, enabled: bool = True):
        super().__init__()
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_k = top_k
        self.guard = guard
        self.enabled = enabled

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if not self.enabled or not _finite(loss) or (self.guard and self.guard.tripped):
            return
        step = global_step(self.model)
        text = generate_text(self.model, self.tokenizer, self.prompt, self.max_new_tokens,
                             self.temperature, self.top_k, seed=step)
        print(f"\n--- sample at step {step} ---\n{text}\n---", flush=True)
