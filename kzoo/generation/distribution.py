"""What the model thinks comes next: the top-k next tokens, as terminal bars or a PNG.

Example:
```python
from kzoo.generation import next_word_distribution
from kzoo.models import CausalLM
model = CausalLM.from_preset("gpt_nano", vocab_size=256)
dist = next_word_distribution(model, [72, 105], k=5)
print(dist.bars())
```
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from keras import ops

from kzoo.generation import inputs as inputs_lib
from kzoo.samplers import functional as F


@dataclass
class NextWordDistribution:
    """The k most likely next tokens and their probabilities at one temperature.

    Attributes:
        token_ids: list[int]. most likely first.
        tokens: list[str]. display strings (decoded, or "#id" without a tokenizer).
        probs: list[float]. probabilities under softmax(logits / temperature) over the whole
            vocabulary, so they sum to at most 1.
        temperature: float. the temperature used.
    """

    token_ids: list
    tokens: list
    probs: list
    temperature: float

    def bars(self, width: int = 40) -> str:
        """A terminal bar chart, one row per token, bars scaled to the top probability."""
        label_width = max(len(t) for t in self.tokens)
        top = max(self.probs) or 1.0
        lines = [f"next-token probabilities (temperature {self.temperature:g})"]
        for token, prob in zip(self.tokens, self.probs):
            filled = prob / top * width
            bar = "\u2588" * int(filled) + ("\u258c" if filled - int(filled) >= 0.5 else "")
            lines.append(f"{token:>{label_width}} {bar:<{width + 1}} {prob:6.1%}")
        return "\n".join(lines)

    def to_png(self, path) -> Path:
        """Save a horizontal bar chart as a PNG at `path`; returns the path."""
        return plot_distributions([self], path)


def _display(token_id: int, tokenizer) -> str:
    if tokenizer is None:
        return f"#{token_id}"
    text = tokenizer.decode([token_id])
    return repr(text)[1:-1] or f"#{token_id}"  # escapes make "\n" and " " visible


def next_word_distribution(model, prompt, k: int = 10, temperature: float = 1.0,
                           tokenizer=None, truncate: bool = False) -> NextWordDistribution:
    """The top-`k` next tokens after `prompt` with their probabilities.

    Args:
        model: kzoo `CausalLM`.
        prompt: str (needs `tokenizer`) or list[int]. one prompt.
        k: int. how many tokens to show; > 0, capped at the vocabulary size.
        temperature: float. > 0; the distribution is softmax(logits / temperature).
        tokenizer: kzoo tokenizer or None. for text prompts and readable token labels.
        truncate: bool. keep the last `max_sequence_length` tokens of a longer prompt instead
            of raising a ValueError.

    Example:
    ```python
    from kzoo.generation import next_word_distribution
    from kzoo.models import CausalLM
    model = CausalLM.from_preset("gpt_nano", vocab_size=256)
    next_word_distribution(model, [72, 105], k=3, temperature=0.5).probs
    ```
    """
    k = F.check_top_k(k)
    temperature = F.check_temperature(temperature)
    if temperature == 0:
        raise ValueError("`temperature` must be > 0 for a distribution (0 is argmax).")
    id_lists, _ = inputs_lib.normalize_prompts(prompt, tokenizer, vocab_size=model.vocab_size)
    if len(id_lists) != 1:
        raise ValueError(f"next_word_distribution takes one prompt; received {len(id_lists)}.")
    ids = id_lists[0]
    context = model.max_sequence_length
    if len(ids) > context:
        if not truncate:
            raise ValueError(
                f"The prompt has {len(ids)} tokens but the model's context "
                f"(max_sequence_length) is {context}; shorten it or pass truncate=True."
            )
        ids = ids[-context:]
    logits = model(np.array([ids], np.int32))[:, -1, :]  # (1, vocab)
    probs = ops.softmax(F.scale_temperature(logits, temperature), axis=-1)
    values, indices = ops.top_k(probs, k=min(k, model.vocab_size), sorted=True)
    token_ids = [int(i) for i in np.asarray(indices)[0]]
    return NextWordDistribution(
        token_ids=token_ids,
        tokens=[_display(i, tokenizer) for i in token_ids],
        probs=[float(p) for p in np.asarray(values)[0]],
        temperature=temperature,
    )


def temperature_sweep(model, prompt, temperatures=(0.5, 1.0, 2.0), k: int = 10,
                      tokenizer=None, truncate: bool = False) -> list[NextWordDistribution]:
    """`next_word_distribution` at several temperatures, all over the same tokens.

    Temperature never changes the ranking, only how peaked it is, so every distribution lists
    the same tokens and they can be compared side by side.

    Args:
        model: kzoo `CausalLM`.
        prompt: str (needs `tokenizer`) or list[int]. one prompt.
        temperatures: sequence of float. each > 0; one distribution per temperature.
        k: int. how many tokens to show; > 0.
        tokenizer: kzoo tokenizer or None. for text prompts and readable token labels.
        truncate: bool. keep the last `max_sequence_length` tokens of a longer prompt instead
            of raising a ValueError.

    Example:
    ```python
    from kzoo.generation import temperature_sweep
    from kzoo.models import CausalLM
    model = CausalLM.from_preset("gpt_nano", vocab_size=256)
    [d.probs[0] for d in temperature_sweep(model, [72, 105], k=3)]   # falls as T rises
    ```
    """
    if not temperatures:
        raise ValueError("`temperatures` must name at least one temperature.")
    return [next_word_distribution(model, prompt, k, t, tokenizer, truncate)
            for t in temperatures]


def plot_distributions(distributions, path) -> Path:
    """Save one or more distributions (e.g. from `temperature_sweep`) as a grouped bar PNG.

    Args:
        distributions: list[NextWordDistribution]. same tokens, in the first's order.
        path: str or Path. where to write the PNG (parent folders are created).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"Plot path must end in .png. Received: {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    first = distributions[0]
    labels = first.tokens
    figure = Figure(figsize=(7, 0.35 * len(labels) + 1.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    height = 0.8 / len(distributions)
    rows = np.arange(len(labels))
    for j, dist in enumerate(distributions):
        by_id = dict(zip(dist.token_ids, dist.probs))
        values = [by_id.get(i, 0.0) for i in first.token_ids]
        axes.barh(rows + j * height, values, height=height, label=f"T = {dist.temperature:g}")
    axes.set_yticks(rows + height * (len(distributions) - 1) / 2, labels)
    axes.invert_yaxis()
    axes.set_xlabel("probability of being the next token")
    axes.set_title("What comes next?")
    if len(distributions) > 1:
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path
