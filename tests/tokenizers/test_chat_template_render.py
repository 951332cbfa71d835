"""`kzoo.tokenizers.chat_template.render_chat_template` against transformers' own renderer
(`transformers.utils.chat_template_utils.render_jinja_template`) on templates that use each
setting and helper it copies (trim/lstrip blocks, loop controls, tojson, generation blocks,
namespace, documents, tools), then the sandbox's refusals, one line each."""

import datetime
import enum

import numpy as np
import pytest

from kzoo.tokenizers.chat_template import DEFAULT_CHAT_TEMPLATE, render_chat_template

chat_utils = pytest.importorskip("transformers.utils.chat_template_utils")

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Wie geht's? ✓ <b>"},
    {"role": "assistant", "content": "Gut."},
    {"role": "user", "content": "Und dir?"},
]
TOOLS = [{"type": "function", "function": {"name": "wetter", "description": "Wetter in é",
                                           "parameters": {"z": 1, "a": [1, 2]}}}]
DOCUMENTS = [{"title": "Ä", "text": "one"}, {"title": "B", "text": "two"}]

TEMPLATES = {
    "default": DEFAULT_CHAT_TEMPLATE,
    # trim_blocks / lstrip_blocks: the indented block tags leave no whitespace behind
    "loop-controls": (
        "{% for m in messages %}\n"
        "    {% if m['role'] == 'system' %}{% continue %}{% endif %}\n"
        "    {{ m['role'] }}: {{ m['content'] }}\n"
        "    {% if loop.index > 2 %}{% break %}{% endif %}\n"
        "{% endfor %}\n"),
    "tojson": ("{{ tools | tojson }}|{{ tools | tojson(indent=2) }}|"
               "{{ {'b': 1, 'a': 'é<'} | tojson(sort_keys=true) }}|"
               "{{ messages[1] | tojson(separators=(',', ':')) }}|{{ dict(x=1) | tojson }}"),
    "generation": ("{% for m in messages %}{% if m['role'] == 'assistant' %}{% generation %}"
                   "[{{ m['content'] }}]{% endgeneration %}{% else %}{{ m['content'] }}"
                   "{% endif %}{% endfor %}"),
    "namespace": ("{% set ns = namespace(n=0, last='') %}{% for m in messages %}"
                  "{% set ns.n = ns.n + 1 %}{% set ns.last = m['role'] %}{% endfor %}"
                  "{{ ns.n }} {{ ns.last }}"),
    "documents": ("{% for d in documents %}{{ d['title'] }}={{ d['text'] }};{% endfor %}"
                  "{{ bos_token }}{% if add_generation_prompt %}>{% endif %}"),
}


@pytest.mark.parametrize("add_generation_prompt", [False, True])
@pytest.mark.parametrize("name", list(TEMPLATES))
def test_renders_what_transformers_renders(name, add_generation_prompt):
    template = TEMPLATES[name]
    variables = {"eos_token": "</s>", "bos_token": "<s>"}
    ours = render_chat_template(template, MESSAGES, add_generation_prompt=add_generation_prompt,
                                tools=TOOLS, documents=DOCUMENTS, **variables)
    theirs, _ = chat_utils.render_jinja_template(
        [MESSAGES], tools=TOOLS, documents=DOCUMENTS, chat_template=template,
        add_generation_prompt=add_generation_prompt, **variables)
    assert ours == theirs[0]
    assert ours  # every template renders something


def test_default_template_is_the_alpaca_layout():
    text = render_chat_template(DEFAULT_CHAT_TEMPLATE, MESSAGES[:3], add_generation_prompt=False,
                                eos_token="<|endoftext|>")
    assert text == ("Be brief.\n\n### Instruction:\nWie geht's? ✓ <b>\n\n### Response:\nGut."
                    "<|endoftext|>\n\n")
    assert render_chat_template(DEFAULT_CHAT_TEMPLATE, MESSAGES[1:2], True).endswith(
        "### Response:\n")
    assert render_chat_template(DEFAULT_CHAT_TEMPLATE, []) == ""
    # add_generation_prompt is a real bool in the template
    assert render_chat_template("{{ add_generation_prompt }}", [], 1) == "True"
    assert render_chat_template("{{ add_generation_prompt }}", []) == "False"
    assert render_chat_template("{{ tools }} {{ documents }}", []) == "None None"


class Role(enum.StrEnum):
    USER = "user"


class Count(enum.IntEnum):
    SEVEN = 7


def test_inputs_are_rebuilt_from_plain_values():
    template = ("{% for m in messages %}{{ m['role'] }}:{{ m['content'] }}:"
                "{{ 'name' in m }}:{{ m['n'] }}:{{ m['t'] | tojson }};{% endfor %}{{ extra }}")
    messages = [{"role": Role.USER, "content": np.float32(0.5), "name": None, "n": np.int64(3),
                 "t": (1, True, 2.5)},
                ({"role": "assistant", "content": object.__new__(Marker), "n": Count.SEVEN,
                  "t": [np.float64(0.25)]})]
    text = render_chat_template(template, messages, extra={"k": [np.bool_(False)]})
    # IntEnum and np.float64 (int/float subclasses) back to plain numbers: "7", not "Count.SEVEN"
    assert text == ("user:0.5:False:3:[1, true, 2.5];assistant:marker:False:7:[0.25];"
                    "{'k': [False]}")


class Marker:
    def __str__(self):
        return "marker"


def test_strftime_now_is_todays_date():
    today = datetime.datetime.now().strftime("%Y-%m")
    assert render_chat_template("{{ strftime_now('%Y-%m') }}", []) == today


@pytest.mark.parametrize("template, message", [
    ("{{ raise_exception('unknown role: ' + messages[0]['role']) }}",
     "chat template failed: unknown role: user"),
    ("{% for m in messages %}\n{{ m['content'] }\n{% endfor %}",
     "chat template is not valid Jinja (line 2): unexpected '}'"),
    ("{{ ''.__class__ }}",
     "chat template refused by the sandbox: access to attribute '__class__' of a 'str' object "
     "is unsafe"),
    ("{% set ns = namespace(_x=1) %}",
     "chat template refused by the sandbox: a namespace may not hold the underscore name '_x'"),
    ("{% set ns = namespace() %}{% set ns._y = 1 %}",
     "chat template refused by the sandbox: a namespace may not hold the underscore name '_y'"),
    ("{{ messages.append(1) }}",
     "chat template refused by the sandbox: access to attribute 'append' of a 'list' object "
     "is unsafe"),
    ("{{ messages[0] | map(attribute='x') | list }} {{ foo(1) }}",
     "chat template failed: 'foo' is undefined"),
])
def test_bad_templates_get_one_line(template, message):
    with pytest.raises(ValueError) as info:
        render_chat_template(template, [{"role": "user", "content": "hi"}])
    assert str(info.value) == message


@pytest.mark.parametrize("messages", [{"role": "user"}, ["hi"], "hi", None])
def test_messages_must_be_a_list_of_dicts(messages):
    with pytest.raises(ValueError, match=r"^`messages` must be a list of dicts with 'role' and "
                                         r"'content'. Received: "):
        render_chat_template(DEFAULT_CHAT_TEMPLATE, messages)


def test_a_tuple_of_messages_is_accepted():
    assert render_chat_template("{{ messages | length }}", tuple(MESSAGES)) == "4"
