"""Chat templates: a conversation rendered to the exact text a chat model was trained on.

A model folder's `chat_template` is a Jinja program written by whoever published the model, so
it is untrusted code: it runs in Jinja's `ImmutableSandboxedEnvironment` (no attribute starting
with `_`, no mutation of the inputs, no way to reach Python internals), with the same settings
and helpers transformers gives it (`trim_blocks`, `lstrip_blocks`, loop controls,
`raise_exception`, `strftime_now`, a `tojson` that keeps non-ASCII, `{% generation %}` blocks),
so a template renders here exactly as `tokenizer.apply_chat_template` renders it there.

Example:
```python
from kzoo.tokenizers.chat_template import DEFAULT_CHAT_TEMPLATE, render_chat_template
text = render_chat_template(DEFAULT_CHAT_TEMPLATE, [{"role": "user", "content": "Hi"}],
                            add_generation_prompt=True, eos_token="<|endoftext|>")
assert text == "### Instruction:\\nHi\\n\\n### Response:\\n"
```
"""

from __future__ import annotations

import functools
import json
from datetime import datetime

# kzoo's own models are tuned on the Alpaca layout (`kzoo.data.instruction`, template
# "alpaca"): one turn renders to the very prompt SFT trained on, each answer ends with EOS.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### Instruction:\n{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'assistant' %}### Response:\n{{ message['content'] }}"
    "{{ eos_token }}\n\n"
    "{% else %}{{ raise_exception('unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Response:\n{% endif %}"
)


def _plain(value):
    """Rebuild inputs from JSON types only: rich objects (arrays, enums, models) carry methods
    the sandbox does not know to block. Keys whose value is None are dropped, as transformers
    does (templates test for a key's presence)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str):  # subclasses (enums) back to the base type
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if hasattr(value, "item"):  # numpy scalars
        return _plain(value.item())
    return str(value)


@functools.lru_cache(maxsize=32)
def _compile(template: str):
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """`{% generation %}...{% endgeneration %}` marks assistant text for training masks in
        transformers; rendering keeps the body unchanged."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(
                lineno)

        def _body(self, caller):
            return caller()

    class Namespace(jinja2.utils.Namespace):
        """`namespace(...)` that refuses underscore names (a route to object internals)."""

        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"a namespace may not hold the underscore name {name!r}")

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes HTML characters; templates expect plain JSON.
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                          separators=separators, sort_keys=sort_keys)

    class Sandbox(ImmutableSandboxedEnvironment):
        def unsafe_undefined(self, obj, attribute):
            # Jinja renders one unsafe lookup as an empty string and fails only on the next
            # use; refusing at once makes a probing template fail loudly, not half-render.
            raise jinja2.exceptions.SecurityError(
                f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is unsafe")

    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, namespace=Namespace,
                       dict=lambda *a, **k: dict(*a, **k),
                       strftime_now=lambda fmt: datetime.now().strftime(fmt))
    return env.from_string(template)


def render_chat_template(template: str, messages, add_generation_prompt: bool = False,
                         tools=None, documents=None, **variables) -> str:
    """Render `messages` with the Jinja chat `template`, sandboxed.

    Args:
        template: str. the Jinja source (a folder's `chat_template`).
        messages: list[dict]. `{"role": ..., "content": ...}` turns.
        add_generation_prompt: bool. end with the header of an assistant turn, so the model
            writes the answer next.
        tools: list[dict] or None. JSON schemas of tools, for templates that list them.
        documents: list[dict] or None. retrieval documents, for templates that use them.
        **variables: more names the template sees (`bos_token`, `eos_token`, ...).

    Returns:
        str. the rendered conversation.

    Raises:
        ValueError: one line when the template is not valid Jinja, calls `raise_exception`,
            or tries something the sandbox forbids (e.g. `{{ ''.__class__.__mro__ }}`).
    """
    import jinja2

    if not isinstance(messages, list | tuple) or not all(isinstance(m, dict) for m in messages):
        raise ValueError(f"`messages` must be a list of dicts with 'role' and 'content'. "
                         f"Received: {messages!r:.200}")
    try:
        compiled = _compile(template)
        return compiled.render(messages=_plain(list(messages)), tools=_plain(tools),
                               documents=_plain(documents),
                               add_generation_prompt=bool(add_generation_prompt),
                               **_plain(variables))
    except jinja2.exceptions.SecurityError as error:
        raise ValueError(f"chat template refused by the sandbox: {error}") from None
    except jinja2.exceptions.TemplateSyntaxError as error:
        raise ValueError(f"chat template is not valid Jinja (line {error.lineno}): "
                         f"{error.message}") from None
    except jinja2.exceptions.TemplateError as error:
        raise ValueError(f"chat template failed: {' '.join(str(error).split())}") from None
