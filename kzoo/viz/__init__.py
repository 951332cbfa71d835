"""Pictures of what a model does: attention heatmaps, the logit lens, parameter counts and
training curves.

Next-word probability bars live with generation (`kzoo.generation.next_word_distribution`,
`temperature_sweep`, `plot_distributions`); this package adds what generation does not draw.

Example:
```python
import numpy as np
from kzoo.models import CausalLM
from kzoo.viz import model_attention, plot_attention
model = CausalLM.from_preset("gpt_nano", vocab_size=32)
probs = model_attention(model, np.array([[3, 1, 4, 1, 5]]))   # one array per block
plot_attention(probs[0][0], list("abcde"), "attention.png", title="block 0")
```
"""

from kzoo.viz.attention import (
    attention_output,
    attention_weights,
    model_attention,
    plot_attention,
)
from kzoo.viz.curves import plot_curves, read_metrics
from kzoo.viz.inspect import (
    logit_lens,
    parameter_groups,
    plot_logit_lens,
    plot_parameter_groups,
)

__all__ = [
    "attention_output",
    "attention_weights",
    "logit_lens",
    "model_attention",
    "parameter_groups",
    "plot_attention",
    "plot_curves",
    "plot_logit_lens",
    "plot_parameter_groups",
    "read_metrics",
]
