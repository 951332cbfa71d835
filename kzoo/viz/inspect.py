"""Looking inside a trained model: where its parameters sit, and what each block predicts.

Example:
```python
import numpy as np
from kzoo.models import CausalLM
from kzoo.viz import logit_lens, parameter_groups
model = CausalLM.from_preset("gpt_nano", vocab_size=32)
parameter_groups(model)          # {"token embedding": 2048, "position embedding": 8192, ...}
logit_lens(model, np.array([[1, 2, 3]])).shape   # (3, 1, 3, 32): embedding + 2 blocks
```
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from keras import ops

from kzoo.viz.attention import as_token_ids


def _count(variables) -> int:
    return int(sum(np.prod(v.shape) for v in variables))


def parameter_groups(model) -> dict[str, int]:
    """Trainable and non-trainable parameters of a kzoo `CausalLM`, by part of the model.

    Args:
        model: kzoo.models.CausalLM. the model.

    Returns:
        dict with "token embedding", "position embedding", "attention", "feed-forward",
        "norms" and "output head" (0 when the head is tied to the token embedding). The
        values add up to `model.count_params()`.

    Example:
    ```python
    from kzoo.models import CausalLM
    from kzoo.viz import parameter_groups
    model = CausalLM.from_preset("llama_nano", vocab_size=100)
    sum(parameter_groups(model).values()) == model.count_params()    # True
    ```
    """
    # The untied output head is the embedding layer's "reverse_embeddings" variable.
    head = [v for v in model.token_embedding.weights if "reverse" in v.path]
    table = [v for v in model.token_embedding.weights if "reverse" not in v.path]
    groups = {
        "token embedding": _count(table),
        "position embedding": _count(model.position_embedding_layer.weights
                                     if model.position_embedding_layer is not None else []),
        "attention": _count(w for b in model.blocks for w in b.attention.weights),
        "feed-forward": _count(w for b in model.blocks for w in b.feedforward.weights),
        "norms": _count(w for b in model.blocks
                        for w in b.attention_norm.weights + b.feedforward_norm.weights)
        + _count(model.final_norm.weights),
        "output head": _count(head),
    }
    return groups


def logit_lens(model, token_ids) -> np.ndarray:
    """Next-token probabilities read off the residual stream after the embedding and after
    every block (the "logit lens"): the final norm and output head applied early.

    Args:
        model: kzoo.models.CausalLM. the model.
        token_ids: int array. (batch, seq).

    Returns:
        float32 array (num_layers + 1, batch, seq, vocab_size); entry 0 reads the embeddings,
        entry `i` the output of block `i - 1`, and the last entry equals
        `softmax(model(token_ids))`.

    Example:
    ```python
    import numpy as np
    from kzoo.models import CausalLM
    from kzoo.viz import logit_lens
    model = CausalLM.from_preset("gpt_nano", vocab_size=20)
    probs = logit_lens(model, np.array([[1, 2, 3]]))   # (3, 1, 3, 20)
    probs[:, 0, -1].argmax(-1)                         # each reading's top guess after "3"
    ```
    """
    x = model.embed(as_token_ids(model, token_ids))  # (batch, seq, hidden)
    readings = []
    for block in [None, *model.blocks]:
        if block is not None:
            x = block(x)
        logits = model.logits(model.final_norm(x))  # (batch, seq, vocab)
        readings.append(np.asarray(ops.convert_to_numpy(ops.softmax(logits, axis=-1))))
    return np.stack(readings).astype(np.float32)


def plot_logit_lens(probs, token_ids, path, labels=None, title: str | None = None) -> Path:
    """Heatmap of the probability each reading gives the token that really comes next.

    Args:
        probs: array. (num_layers + 1, seq, vocab) from `logit_lens` for one sequence.
        token_ids: list[int]. the `seq` ids of that sequence.
        path: str or Path. the PNG to write.
        labels: callable or None. id -> display string (e.g. a tokenizer's decode); cells then
            show each reading's top guess.
        title: str or None. figure title.

    Returns the path written.

    Example:
    ```python
    import numpy as np
    from kzoo.models import CausalLM
    from kzoo.viz import logit_lens, plot_logit_lens
    model = CausalLM.from_preset("gpt_nano", vocab_size=20)
    ids = [1, 2, 3, 4]
    plot_logit_lens(logit_lens(model, np.array([ids]))[:, 0], ids, "lens.png")
    ```
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    probs = np.asarray(probs)
    token_ids = [int(t) for t in token_ids]
    if probs.ndim != 3 or probs.shape[1] != len(token_ids):
        raise ValueError(f"`probs` must be (readings, {len(token_ids)}, vocab) for "
                         f"{len(token_ids)} tokens; received shape {probs.shape}.")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"Plot path must end in .png. Received: {path}")
    label = labels or (lambda i: f"#{i}")
    seq = len(token_ids) - 1  # the last token has no "really next" token
    targets = np.array(token_ids[1:])
    grid = probs[:, np.arange(seq), targets]  # (readings, seq - 1)
    figure = Figure(figsize=(0.75 * seq + 2.2, 0.55 * len(probs) + 1.8))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(grid, cmap="magma", vmin=0.0, vmax=1.0, aspect="auto")
    for r in range(len(probs)):
        for c in range(seq):
            guess = label(int(np.argmax(probs[r, c])))
            color = "black" if grid[r, c] > 0.6 else "white"
            axes.text(c, r, guess, ha="center", va="center", fontsize=7, color=color)
    axes.set_xticks(range(seq), [f"{label(a)} → {label(b)}" for a, b in
                                 zip(token_ids[:-1], token_ids[1:])], rotation=60, ha="right",
                    fontsize=7)
    axes.set_yticks(range(len(probs)),
                    ["embedding"] + [f"after block {i}" for i in range(len(probs) - 1)],
                    fontsize=8)
    axes.set_xlabel("token → the token that really comes next")
    if title:
        axes.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axes, label="probability of the real next token")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=90)
    return path


def plot_parameter_groups(groups: dict[str, int], path, title: str | None = None) -> Path:
    """Horizontal bars of `parameter_groups(model)`, with counts and shares.

    Args:
        groups: dict[str, int]. from `parameter_groups`.
        path: str or Path. the PNG to write.
        title: str or None. figure title.

    Returns the path written.

    Example:
    ```python
    from kzoo.viz import plot_parameter_groups
    plot_parameter_groups({"attention": 4096, "feed-forward": 8192}, "params.png")
    ```
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"Plot path must end in .png. Received: {path}")
    total = sum(groups.values())
    if total <= 0:
        raise ValueError("`groups` holds no parameters.")
    names = list(groups)
    figure = Figure(figsize=(6.5, 0.4 * len(names) + 1.4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.barh(names, [groups[n] for n in names], color="tab:blue")
    for i, name in enumerate(names):
        note = f" {groups[name]:,} ({groups[name] / total:.0%})"
        if name == "output head" and groups[name] == 0:
            note = " 0: tied to the token embedding"
        axes.text(groups[name], i, note, va="center", fontsize=8)
    axes.invert_yaxis()
    axes.set_xlim(0, max(groups.values()) * 1.45)
    axes.set_xlabel(f"parameters (total {total:,})")
    if title:
        axes.set_title(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=90)
    return path
