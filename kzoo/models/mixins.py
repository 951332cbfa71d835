"""What `CausalLM` offers beyond its forward pass, kept beside it to keep each file short:
converting to and from other libraries, and generating text.

Both are thin: the work lives in `kzoo.interop` and `kzoo.generation`, imported when called
so that the models package never imports the layers above it.
"""


class InteropMixin:
    """`from_hf`, `save_hf`, `from_keras_hub` and `to_keras_hub` for `CausalLM`."""

    # kzoo.interop sits above the models; imported when called so models never import it.
    @classmethod
    def from_hf(cls, path, dtype=None, **overrides):
        """Build from a local Hugging Face folder (safetensors) of any model type a registered
        family reads (`kzoo.interop.SUPPORTED_MODEL_TYPES`: gpt2, llama, mistral, qwen2,
        qwen3, gemma3_text).

        See `kzoo.interop.load_hf` for `dtype`, the `overrides` and every refusal.

        Example:
        ```python
        from kzoo.models import CausalLM
        model = CausalLM.from_hf("SmolLM2-135M-Instruct", dtype="float32")
        ```
        """
        from kzoo.interop.hf import load_hf

        return load_hf(path, dtype=dtype, **overrides)

    def save_hf(self, path, tokenizer=None):
        """Write a folder `transformers.AutoModelForCausalLM.from_pretrained` loads (see
        `kzoo.interop.save_hf`), with the tokenizer's files when one is given."""
        from kzoo.interop.hf import save_hf

        return save_hf(self, path, tokenizer=tokenizer)

    @classmethod
    def from_keras_hub(cls, model_or_preset, dtype=None, **options):
        """Copy a keras-hub backbone / CausalLM of a registered family (GPT-2, Llama, Llama 3,
        Qwen3, Gemma 3), or a preset folder saved with `save_to_preset` (see
        `kzoo.interop.keras_hub.from_keras_hub`)."""
        from kzoo.interop.keras_hub import from_keras_hub

        return from_keras_hub(model_or_preset, dtype=dtype, **options)

    def to_keras_hub(self):
        """The equivalent keras-hub backbone (`GPT2Backbone`, `LlamaBackbone`, `Qwen3Backbone`,
        `Gemma3Backbone`: the model's family's)."""
        from kzoo.interop.keras_hub import to_keras_hub

        return to_keras_hub(self)


class GenerationMixin:
    """`generate`, `stream` and `next_word_distribution` for `CausalLM`."""

    def quantize_for_generation(self, mode: str = "int8"):
        """A snapshot of the weights for fast decoding: "int8", "bfloat16" or "float32";
        pass it as `generate(..., weights=...)` (see `kzoo.generation.quantize_for_generation`).

        Example:
        ```python
        from kzoo.models import CausalLM
        model = CausalLM.from_preset("gpt_nano")
        int8 = model.quantize_for_generation("int8")
        model.generate([[1, 2, 3]], max_new_tokens=4, weights=int8).token_ids
        ```
        """
        from kzoo.generation import quantize_for_generation

        return quantize_for_generation(self, mode)

    def quantize(self, mode, *args, **kwargs):
        """Keras' `Model.quantize`; generators traced before it are dropped (see
        `kzoo.generation.get_generator`), since their programs hold the float kernels."""
        result = super().quantize(mode, *args, **kwargs)
        self.structure_version = getattr(self, "structure_version", 0) + 1
        return result

    def generate(self, prompts, max_new_tokens: int = 64, sampler="greedy", tokenizer=None,
                 **kwargs):
        """Continue `prompts` (token id lists, or texts with a tokenizer) with the KV cache.

        See `kzoo.generation.Generator.generate` for stop sequences, log-probs and seeds.

        Example:
        ```python
        from kzoo.models import CausalLM
        model = CausalLM.from_preset("gpt_nano")
        model.generate([[1, 2, 3]], max_new_tokens=4, sampler="top_k", seed=0).token_ids
        ```
        """
        from kzoo.generation import generate

        return generate(self, prompts, max_new_tokens, sampler=sampler, tokenizer=tokenizer,
                        **kwargs)

    def stream(self, prompt, max_new_tokens: int = 64, sampler="greedy", tokenizer=None,
               **kwargs):
        """Yield the new tokens (or text pieces) of one prompt as they are produced."""
        from kzoo.generation import stream

        return stream(self, prompt, max_new_tokens, sampler=sampler, tokenizer=tokenizer,
                      **kwargs)

    def next_word_distribution(self, prompt, k: int = 10, temperature: float = 1.0,
                               tokenizer=None, truncate: bool = False):
        """The `k` most likely next tokens with their probabilities (see `kzoo.generation`);
        `truncate=True` keeps the end of a prompt longer than the context."""
        from kzoo.generation import next_word_distribution

        return next_word_distribution(self, prompt, k, temperature, tokenizer, truncate)
