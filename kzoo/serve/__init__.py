"""`kzoo serve`: a kzoo model behind an OpenAI-compatible HTTP API, with continuous batching.

    kzoo serve runs/gpt_baby_instruction_sft --slots 8
    curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
        -d '{"model": "kzoo", "prompt": "Once upon a time", "max_tokens": 16}'

The pieces, each importable alone (this package imports nothing at import time, so
`kzoo.serve.http` stays free of TensorFlow for `kzoo rate`):

- `kzoo.serve.http`: the Starlette / uvicorn pieces shared with `kzoo rate` (limits, errors).
- `kzoo.serve.sampling`: per-row sampling settings in one compiled step.
- `kzoo.serve.sequence`: `SamplingParams`, `Sequence` and the per-token bookkeeping.
- `kzoo.serve.engine`: `Engine`, the slots, the KV cache and the model thread.
- `kzoo.serve.modes`: the exclusive lane (contrastive search, speculative decoding).
- `kzoo.serve.protocol`: OpenAI request parsing and answer building.
- `kzoo.serve.app`: the Starlette app (endpoints, SSE streaming, keys, limits).
- `kzoo.serve.cli`: the `kzoo serve` command.
"""
