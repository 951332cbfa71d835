"""`kzoo chat`: the prompt layouts (against transformers and kzoo's SFT encoding; raw text for a
pre-trained model), the in-chat commands, a conversation longer than the context, and a whole
session through a pseudo-terminal (streaming, /odds, Ctrl-C, Ctrl-D)."""

import io
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from kzoo.cli import chat as chat_lib
from kzoo.models import CausalLM
from kzoo.tokenizers import BPETokenizer, ByteTokenizer, load_tokenizer
from kzoo.tokenizers.hf import HFTokenizer


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat") / "run"
    keras.utils.set_random_seed(0)
    model = CausalLM.from_preset("gpt_nano", vocab_size=257, max_sequence_length=1024)
    # A zero end-of-text row gives end-of-text the logit 0 (the head is the tied embedding),
    # below the largest of the 256 others: a top-1 reply never ends by itself, so a Ctrl-C
    # sent while it streams always lands inside it, whatever the other random weights.
    table = model.token_embedding.embeddings
    table.assign(np.concatenate([np.asarray(table)[:-1], np.zeros((1, table.shape[1]))]))
    root.mkdir()
    model.save(root / "model.keras")
    ByteTokenizer().save(root / "tokenizer")
    return root


def _args(run_dir, *extra):
    return chat_lib.parse_args([str(run_dir), *extra])


def test_pretrained_model_gets_raw_text_not_the_instruction_layout(run_dir):
    # No chat template, no SFT config.yaml: a pre-trained model, which never saw
    # "### Instruction:" headers, continues the raw text (a new line between turns).
    _, _, fmt = chat_lib.load(_args(run_dir))
    assert fmt.name.startswith("raw text")
    assert fmt.prompt_ids(None, [("Hi", "Yo")], "And?") == list(b"HiYo\nAnd?")


def test_kzoo_layout_when_asked_for(run_dir):
    model, tokenizer, fmt = chat_lib.load(_args(run_dir, "--template", "chat"))
    ids = fmt.prompt_ids(None, [("Hi", "Yo")], "And?")
    eot = tokenizer.eot_id
    expected = (list(b"### Instruction:\nHi\n\n### Response:\nYo") + [eot]
                + list(b"\n\n### Instruction:\nAnd?\n\n### Response:\n"))
    assert ids == expected


def test_sft_template_of_the_run_is_used(run_dir, tmp_path):
    from kzoo.data.instruction import encode_sft

    run = tmp_path / "sft"
    run.mkdir()
    for name in ("model.keras", "tokenizer"):
        os.symlink(run_dir / name, run / name)
    (run / "config.yaml").write_text("data:\n  template: plain\n")
    _, tokenizer, fmt = chat_lib.load(_args(run))
    assert fmt.name == "prompt template 'plain'"
    # One turn is exactly the layout SFT trained on: prompt, response, end-of-text.
    arrays = encode_sft([{"instruction": "Hi", "input": "", "output": "Yo"}], tokenizer,
                        max_length=64, template="plain")
    row = arrays["token_ids"][0].tolist()
    trained = row[:row.index(tokenizer.eot_id) + 1]  # then padding
    assert trained == list(b"Hi\nYo") + [tokenizer.eot_id]
    assert fmt.prompt_ids(None, [("Hi", "Yo")], "x")[:len(trained)] == trained
    assert fmt.prompt_ids(None, [], "Hi") == list(b"Hi\n")
    with pytest.raises(ValueError, match="--template 'nope'"):
        chat_lib.choose_format(tokenizer, None, "nope")


def test_a_model_without_a_source_or_chat_template_continues_raw_text():
    # The library call with no model source (source=None, as its docstring allows) used to
    # raise AttributeError reading None.path.
    fmt = chat_lib.choose_format(ByteTokenizer(), None)
    assert fmt.name.startswith("raw text")
    assert fmt.end == list(ByteTokenizer().encode("\n"))  # turns end in a new line, not EOT


def test_chat_template_matches_transformers(tmp_path):
    from transformers import AutoTokenizer

    kzoo_bpe = BPETokenizer.train(["Hello there, how are you today?"] * 30, vocab_size=300)
    folder = HFTokenizer.from_kzoo(kzoo_bpe).save(tmp_path / "tok")
    tokenizer = load_tokenizer(folder)
    fmt = chat_lib.choose_format(tokenizer, None)
    assert fmt.name == "the tokenizer's chat template"
    reference = AutoTokenizer.from_pretrained(str(folder))
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hello there"},
                {"role": "user", "content": "how are you?"}]
    expected = reference.apply_chat_template(messages, add_generation_prompt=True,
                                             tokenize=True)
    expected = expected if isinstance(expected, list) else expected["input_ids"]  # BatchEncoding
    ids = fmt.prompt_ids("Be brief.", [("Hello", "Hello there")], "how are you?")
    assert ids == list(expected)


def test_commands_in_process(run_dir):
    model, tokenizer, fmt = chat_lib.load(_args(run_dir))
    chat = chat_lib.Chat(model, tokenizer, fmt, {"sampler": "top_k", "top_k": 5,
                                                 "max_new_tokens": 6, "seed": 1})
    lines = iter(["hello", "/set temperature 0.5", "/set top_k x", "/set nope 1",
                  "/set max_new_tokens 5000", "/set max_new_tokens 0", "/set sampler beam",
                  "/odds 3", "/frobnicate", "again", "/reset", "/set", "/quit", "never read"])
    out = io.StringIO()
    assert chat_lib.loop(chat, read=lambda prompt: next(lines), out=out) == 0
    text = out.getvalue()
    assert next(lines) == "never read"  # /quit ended the loop
    assert "[temperature = 0.5]" in text and chat.settings["temperature"] == 0.5
    assert "error: /set top_k: 'x' is not a number" in text
    assert "error: usage: /set KEY VALUE" in text
    # 0 is refused (it meant "the default", 512, without a word), and so is beam search.
    assert text.count("error: max_new_tokens must be in [1, 1023]") == 2 and chat.limit == 6
    assert "[max_new_tokens = 0]" not in text
    assert "error: sampler 'beam': expected one of greedy, random, top_k, top_p, min_p" in text
    assert chat.settings["sampler"] == "top_k"
    assert "error: unknown command /frobnicate" in text
    assert "[conversation forgotten]" in text and chat.turns == []
    assert "temperature=0.5" in text.splitlines()[-1]
    assert text.count("model> ") == 2
    # The odds shown are softmax(logits / T) of the prompt the reply began from, with the T
    # the reply was drawn with (1: "hello" came before /set temperature 0.5), not the current.
    rows = _percentages(text)
    assert len(rows) == 3
    first = fmt.prompt_ids(None, [], "hello")
    logits = np.asarray(model(np.array([first], np.int32)))[0, -1].astype(np.float64)
    probs = np.exp((logits - logits.max()) / 1.0)
    probs /= probs.sum()
    top = np.sort(probs)[::-1][:3]
    assert [float(r) for r in rows] == pytest.approx(list(100 * top), abs=0.051)


def test_bad_input_is_one_line_exit_2(tmp_path, run_dir, capsys):
    assert chat_lib.main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "missing" in err
    assert chat_lib.main([str(run_dir), "--max-new-tokens", "1024"]) == 2
    assert "max_new_tokens" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert chat_lib.main([str(tmp_path / "empty")]) == 2
    assert "does not recognize" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--sampler", "beam"], "--sampler 'beam': expected one of greedy, random, top_k"),
    (["--max-new-tokens", "0"], "--max-new-tokens 0: must be at least 1"),
])
def test_bad_sampler_settings_are_refused_before_the_model_loads(run_dir, capsys, flags,
                                                                 message):
    started = time.monotonic()
    assert chat_lib.main([str(run_dir), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert time.monotonic() - started < 5  # no model load first


def test_a_long_conversation_keeps_the_recent_turns_that_fit_and_says_so_once():
    keras.utils.set_random_seed(0)
    tokenizer = ByteTokenizer()
    model = CausalLM(vocab_size=tokenizer.vocab_size, num_layers=1, num_heads=2, hidden_dim=16,
                     intermediate_dim=32, max_sequence_length=128)
    fmt = chat_lib.choose_format(tokenizer, None, "chat")
    chat = chat_lib.Chat(model, tokenizer, fmt, {"sampler": "greedy", "max_new_tokens": 8})
    room = 128 - 8
    out = io.StringIO()
    messages = [f"m{n}" for n in range(6)]  # a turn: ~50 tokens in the ### layout
    for message in messages:
        chat.reply(message, out)
    text = out.getvalue()
    assert text.count("no longer fits the model's context (128 tokens, 8 of them for the "
                      "reply)") == 1, text
    assert "left out" not in text  # every message fits by itself: whole turns only
    # What the model saw last: the most recent whole turns, as many as fit, then the message.
    kept = next(k for k in range(len(chat.turns))
                if len(fmt.prompt_ids(None, chat.turns[k:-1], messages[-1])) <= room)
    assert 0 < kept < len(chat.turns) - 1
    assert chat.last_prompt == fmt.prompt_ids(None, chat.turns[kept:-1], messages[-1])
    chat.reset()
    chat.reply(messages[0], out)
    assert chat.last_prompt == fmt.prompt_ids(None, [], messages[0])


def test_ctrl_c_inside_a_command_stops_the_command_not_the_chat(run_dir, monkeypatch):
    model, tokenizer, fmt = chat_lib.load(_args(run_dir))
    chat = chat_lib.Chat(model, tokenizer, fmt, {"sampler": "greedy", "max_new_tokens": 2})

    def interrupted(k=10):
        raise KeyboardInterrupt

    monkeypatch.setattr(chat, "odds", interrupted)
    lines = iter(["/odds", "/set temperature 0.3", "/quit"])
    out = io.StringIO()
    assert chat_lib.loop(chat, read=lambda prompt: next(lines), out=out) == 0
    assert "[stopped]" in out.getvalue() and "[temperature = 0.3]" in out.getvalue()


def _percentages(text: str) -> list[float]:
    """The percentages of the rows of the first `NextWordDistribution.bars()` in `text`."""
    block = text.split("next-token probabilities", 1)[1].split("the reply began", 1)[0]
    return [float(p) for p in re.findall(r"([\d.]+)%\r?$", block, re.M)]


class Terminal:
    """`kzoo chat` on a pseudo-terminal: what a person sees and types."""

    def __init__(self, argv):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the command, with the pty as its terminal
            # A shell starts a command with Ctrl-C's default action; a test worker may hold
            # SIGINT ignored (a fresh-clone CI run saw it: both Ctrl-C tests failed), and an
            # ignored signal stays ignored across exec, so Python would never raise
            # KeyboardInterrupt in the chat.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.execvpe(sys.executable, [sys.executable, "-m", "kzoo.cli.main", *argv],
                       {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        self.seen, self.pos = "", 0

    def read_until(self, pattern, timeout=300.0) -> str:
        """The output since the last match, up to and including the next match of `pattern`."""
        deadline = time.monotonic() + timeout
        while (match := re.search(pattern, self.seen[self.pos:])) is None:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(left, 0))
            if not ready:
                raise AssertionError(f"timed out waiting for {pattern!r}; saw "
                                     f"{self.seen[self.pos:][-2000:]!r}")
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:  # the child closed the terminal
                chunk = b""
            if not chunk:
                raise AssertionError(f"exited before {pattern!r}; saw {self.seen[-2000:]!r}")
            self.seen += chunk.decode("utf-8", errors="replace")
        found = self.seen[self.pos:self.pos + match.end()]
        self.pos += match.end()
        return found

    def type(self, text: str):
        os.write(self.fd, text.encode())

    def wait(self, timeout=60.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:  # drain, so the child never blocks on a full terminal
                if select.select([self.fd], [], [], 0.1)[0]:
                    self.seen += os.read(self.fd, 4096).decode("utf-8", errors="replace")
            except OSError:
                pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError(f"kzoo chat did not exit; saw {self.seen[-2000:]!r}")


@pytest.mark.slow
def test_session_through_a_pseudo_terminal(run_dir):
    # top-k 1: a long reply that no end-of-text cuts short, so Ctrl-C lands inside it.
    term = Terminal(["chat", str(run_dir), "--sampler", "top_k", "--top-k", "1",
                     "--max-new-tokens", "12"])
    try:
        term.read_until(r"kzoo chat with .*Ctrl-C stops a reply")
        term.read_until(r"you> ")
        term.type("hello\n")
        reply = term.read_until(r"you> ")
        assert re.search(r"model> .+", reply, re.S)
        term.type("/odds\n")
        odds = term.read_until(r"you> ")
        shown = _percentages(odds)
        assert len(shown) == 10 and sum(shown) <= 100.05 and shown == sorted(shown)[::-1]
        assert "the reply began with" in odds
        term.type("/set max_new_tokens 900\n")
        term.read_until(r"\[max_new_tokens = 900\]")
        term.read_until(r"you> ")
        term.type("tell me more\n")
        streamed = term.read_until(r"(?s)model> .{20}", timeout=300)  # pieces arrive one by one
        assert "you> " not in streamed.split("tell me more", 1)[1]
        os.kill(term.pid, signal.SIGINT)
        after = term.read_until(r"you> ")
        assert "[stopped]" in after
        term.type("/reset\n")
        term.read_until(r"\[conversation forgotten\]")
        term.type("\x04")  # Ctrl-D at the prompt: leave cleanly
        assert term.wait() == 0
    finally:
        try:
            os.kill(term.pid, signal.SIGKILL)
            os.waitpid(term.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(term.fd)


@pytest.mark.slow
def test_ctrl_c_at_the_prompt_exits_0(run_dir):
    term = Terminal(["chat", str(run_dir)])
    try:
        term.read_until(r"you> ")
        os.kill(term.pid, signal.SIGINT)
        assert term.wait(timeout=300) == 0  # a loaded CI machine tears TensorFlow down slowly
        assert "Traceback" not in term.seen and "KeyboardInterrupt" not in term.seen
    finally:
        os.close(term.fd)


def test_quit_exits_0_without_a_terminal(run_dir):
    # The environment a person has: no TF_CPP_MIN_LOG_LEVEL (the command sets 2, which lets
    # ERROR lines through, such as "failed call to cuInit" on a machine without a GPU).
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-m", "kzoo.cli.main", "chat", str(run_dir)],
                          input="/quit\n", capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("kzoo chat with ")
    assert done.stderr == "", "loading a model prints nothing on stderr"
