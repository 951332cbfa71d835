"""Models in and out of kzoo: Hugging Face folders (safetensors) and keras-hub models.

Example:
```python
from kzoo.interop import load_hf, save_hf
from kzoo.models import CausalLM
save_hf(CausalLM.from_preset("gpt_nano"), "gpt_nano_hf")
model = load_hf("gpt_nano_hf")
```
"""

from kzoo.interop.hf import load_hf, save_hf
from kzoo.interop.hf_config import NO_COMPUTE_FIELDS, SUPPORTED_MODEL_TYPES

__all__ = ["NO_COMPUTE_FIELDS", "SUPPORTED_MODEL_TYPES", "load_hf", "save_hf"]
