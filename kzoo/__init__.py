"""kzoo: a Keras 3 model zoo for language models you can train, align and understand.

Example:
```python
import kzoo
model = kzoo.models.CausalLM.from_preset("gpt_nano", vocab_size=256)
```
"""

from kzoo._quiet import import_tensorflow_quietly

import_tensorflow_quietly()  # before Keras imports it

from kzoo import generation, layers, models, samplers  # noqa: E402
from kzoo.version import __version__  # noqa: E402

__all__ = ["generation", "layers", "models", "samplers", "__version__"]
