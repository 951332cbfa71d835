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
from kzoo.interop.hf_fields import NO_COMPUTE_FIELDS


def __getattr__(name):
    # From the family registry on first use (its modules import kzoo.interop's machinery).
    if name == "SUPPORTED_MODEL_TYPES":
        from kzoo.interop import hf_config

        return hf_config.SUPPORTED_MODEL_TYPES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["NO_COMPUTE_FIELDS", "SUPPORTED_MODEL_TYPES", "load_hf", "save_hf"]
