"""The `kzoo rate` page in a real headless Chromium (Playwright, `tests/browser.py`): clicks
and keyboard shortcuts write the expected records; a reload, a server restart and a second tab
lose or repeat nothing; thumbs mode writes KTO records; live sampling shows its progress; bad
input gets one line on stderr and exit code 2.

Set `KZOO_SCREENSHOTS=docs/assets/rate` to also save the screenshots the docs show.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ITEMS = [
    {"prompt": "Q: What is 2+2?\nA:",
     "completions": [" 4.", " 22, because you put them together."]},
    {"prompt": "Q: What is the capital of France?\nA:", "completions": [" Paris.", " Rome."]},
    {"prompt": "Q: What is the opposite of hot?\nA:", "completions": [" Cold.", " Warm-ish."]},
    {"prompt": "Q: What is 3*3?\nA:", "completions": [" 9.", " 6."]},
    {"prompt": "Q: Name a colour.\nA:", "completions": [" Blue.", " Seven."]},
    {"prompt": "Write a greeting:", "completions": [" Hello, and welcome!"]},
    {"prompt": "Write a farewell:", "completions": [" Potato."]},
]
ENV = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
SHOTS = os.environ.get("KZOO_SCREENSHOTS")


def shot(page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / name))


def start(args, out, timeout: float = 120) -> tuple[str, subprocess.Popen]:
    """Run `python -m kzoo.cli.rate ARGS --out OUT --port 0` in OUT's folder (the page shows
    OUT as given: a short name in the screenshots); (page URL, process)."""
    proc = subprocess.Popen([sys.executable, "-m", "kzoo.cli.rate", *args, "--out",
                             Path(out).name, "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, cwd=Path(out).parent)
    for line in proc.stdout:
        if "http://" in line:
            return line.split()[2], proc
    proc.wait(timeout)
    raise AssertionError(f"kzoo rate did not start (exit {proc.returncode}): "
                         f"{proc.stderr.read()}")


def stop(proc) -> None:
    proc.terminate()  # no clean shutdown: every judgement must already be on disk
    proc.wait(timeout=10)


def lines(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()] \
        if Path(path).exists() else []


@pytest.fixture
def candidates(tmp_path):
    path = tmp_path / "candidates.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in ITEMS))
    return path


@pytest.fixture
def served(candidates, tmp_path):
    out = tmp_path / "ratings.jsonl"
    url, proc = start(["--candidates", str(candidates)], out)
    yield url, out
    stop(proc)


def shown(page) -> dict:
    """The unit on the page: id, prompt and the visible completions."""
    page.wait_for_function("document.body.dataset.unit || !document.getElementById('done')"
                           ".hidden")
    return page.evaluate("""() => ({
      id: document.body.dataset.unit, prompt: document.getElementById('prompt').textContent,
      left: document.getElementById('left').textContent,
      right: document.getElementById('right').textContent,
      single: document.getElementById('completion').textContent,
      pair: !document.getElementById('pair').hidden,
      done: !document.getElementById('done').hidden})""")


def act(page, action) -> None:
    """Do `action` (a key name, or a CSS selector to click) and wait for the next unit."""
    before = page.evaluate("document.body.dataset.unit")
    if action.startswith("#"):
        page.click(action)
    else:
        page.keyboard.press(action)
    page.wait_for_function(f"document.body.dataset.unit !== {json.dumps(before)} || "
                           "!document.getElementById('done').hidden")


def progress(page) -> str:
    page.wait_for_function("document.body.dataset.ready")  # the server's answer, not the HTML's
    return page.inner_text("#progress")


def test_clicks_and_shortcuts_write_the_expected_records(browser, served):
    url, out = served
    page = browser.new_page(bypass_csp=True, viewport={"width": 1100, "height": 720})
    page.goto(url)
    expected_pairs, seen = [], []
    for action in ("1", "#right-better", "3", "#both-bad", "edit"):
        unit = shown(page)
        seen.append(unit["id"])
        if action in ("1", "#right-better"):
            better, worse = ((unit["left"], unit["right"]) if action == "1"
                             else (unit["right"], unit["left"]))
            expected_pairs.append({"prompt": unit["prompt"], "chosen": better,
                                   "rejected": worse})
        if action == "1":
            assert page.is_visible("#left-better") and not page.is_visible("#thumbs-up")
            shot(page, "rate-pair.png")
        if action == "edit":
            page.keyboard.press("e")
            page.select_option("#edit-base", "right")
            assert page.input_value("#edit-text") == unit["right"]
            page.fill("#edit-text", unit["right"] + " (corrected)")
            shot(page, "rate-edit.png")
            expected_pairs.append({"prompt": unit["prompt"],
                                   "chosen": unit["right"] + " (corrected)",
                                   "rejected": unit["left"]})
            act(page, "Control+Enter")
        else:
            act(page, action)
    # The items with one completion come next, even in pairs mode: thumbs up / down.
    assert shown(page)["single"] == ITEMS[5]["completions"][0]
    assert page.is_visible("#thumbs-up") and not page.is_visible("#left-better")
    shot(page, "rate-thumbs.png")
    act(page, "u")
    act(page, "#thumbs-down")
    assert shown(page)["done"] and progress(page) == "7 / 7 judged"
    assert lines(out) == expected_pairs
    assert lines(out.with_name("ratings.kto.jsonl")) == [
        {"prompt": ITEMS[5]["prompt"], "completion": ITEMS[5]["completions"][0], "label": True},
        {"prompt": ITEMS[6]["prompt"], "completion": ITEMS[6]["completions"][0], "label": False}]
    meta = lines(out.with_name("ratings.meta.jsonl"))
    assert [m["judgement"] for m in meta] == ["left", "right", "tie", "both_bad", "edit", "up",
                                              "down"]
    assert [m["id"] for m in meta[:5]] == seen and len({m["id"] for m in meta}) == 7
    assert meta[4]["edited"] and meta[4]["base"] == "right"


def test_the_page_runs_under_its_content_security_policy(browser, served):
    # The other tests bypass the policy: Playwright's string predicates are eval'd. Here the
    # page runs as a person's browser runs it, and another site cannot frame it.
    url, out = served
    page = browser.new_page()
    refused = []
    page.on("console", lambda message: refused.append(message.text)
            if "Content Security Policy" in message.text else None)
    page.goto(url)
    page.wait_for_selector("#left-better:visible")
    page.click("#left-better")
    page.wait_for_selector("#status:has-text('left better')")
    assert refused == [] and len(lines(out)) == 1
    framer = browser.new_page()
    framer.set_content(f'<iframe src="{url}"></iframe>')
    framer.wait_for_timeout(1000)
    frame = framer.frames[-1]
    assert frame is not framer.main_frame and frame.url.startswith("chrome-error:")


def test_thumbs_mode_rates_every_completion_and_survives_reload(browser, served):
    url, out = served
    page = browser.new_page(bypass_csp=True)
    page.goto(url)
    page.keyboard.press("t")
    page.wait_for_function("document.getElementById('mode').textContent === 'Mode: thumbs'")
    assert not shown(page)["pair"] and progress(page) == "0 / 12 judged"
    first = shown(page)["single"]
    act(page, "u")
    second = shown(page)["single"]
    act(page, "d")
    page.reload()
    assert "mode=thumbs" in page.url and progress(page) == "2 / 12 judged"
    assert lines(out.with_name("ratings.kto.jsonl")) == [
        {"prompt": ITEMS[0]["prompt"], "completion": first, "label": True},
        {"prompt": ITEMS[0]["prompt"], "completion": second, "label": False}]
    assert sorted([first, second]) == sorted(ITEMS[0]["completions"])
    assert not out.exists(), "no pair was judged: no pairs file"


def test_reload_and_server_restart_keep_progress(browser, candidates, tmp_path):
    out = tmp_path / "ratings.jsonl"
    url, proc = start(["--candidates", str(candidates)], out)
    page = browser.new_page(bypass_csp=True)
    page.goto(url)
    judged = []
    for key in ("1", "2"):
        judged.append(shown(page)["id"])
        act(page, key)
    on_screen = shown(page)["id"]
    page.reload()
    assert progress(page) == "2 / 7 judged" and shown(page)["id"] == on_screen
    stop(proc)
    url, proc = start(["--candidates", str(candidates)], out)
    try:
        page.goto(url)
        assert progress(page) == "2 / 7 judged"
        assert shown(page)["id"] not in judged
        act(page, "3")
        assert progress(page) == "3 / 7 judged"
    finally:
        stop(proc)
    ids = [m["id"] for m in lines(out.with_name("ratings.meta.jsonl"))]
    assert len(ids) == 3 and len(set(ids)) == 3 and ids[:2] == judged
    assert len(lines(out)) == 2


def test_two_tabs_never_record_a_pair_twice(browser, served):
    url, out = served
    context = browser.new_context(bypass_csp=True)
    tab1, tab2 = context.new_page(), context.new_page()
    tab1.goto(url)
    tab2.goto(url)
    assert shown(tab1)["id"] != shown(tab2)["id"], "a second tab gets another pair"
    # A duplicated tab keeps its sessionStorage: both tabs then show the same pair.
    client = tab1.evaluate("sessionStorage.getItem('kzoo-rate-client')")
    tab3 = context.new_page()
    tab3.add_init_script(f"sessionStorage.setItem('kzoo-rate-client', {json.dumps(client)})")
    tab3.goto(url)
    same = shown(tab1)["id"]
    assert shown(tab3)["id"] == same
    act(tab1, "1")
    act(tab3, "2")
    assert "not recorded again" in tab3.inner_text("#status")
    assert shown(tab3)["id"] != same
    meta = lines(out.with_name("ratings.meta.jsonl"))
    assert [m["id"] for m in meta] == [same] and meta[0]["judgement"] == "left"
    assert len(lines(out)) == 1
    context.close()


def test_live_sampling_shows_progress_then_pairs(browser, tmp_path):
    from kzoo.models import CausalLM
    from kzoo.tokenizers import ByteTokenizer

    run = tmp_path / "run"
    run.mkdir()
    CausalLM.from_preset("gpt_nano", vocab_size=257, max_sequence_length=64).save(
        run / "model.keras")
    ByteTokenizer().save(run / "tokenizer")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello\nThe cat\nOnce upon\n")
    out = tmp_path / "ratings.jsonl"
    url, proc = start(["--run", str(run), "--prompts", str(prompts), "--seed", "5",
                       "--sampler", "top_k", "--top-k", "20", "--max-new-tokens", "6"], out)
    try:
        page = browser.new_page(bypass_csp=True)
        page.goto(url)
        page.wait_for_selector("#sampling:not([hidden])", timeout=10_000)
        assert "prompts" in page.inner_text("#sampling-text")
        shot(page, "rate-sampling.png")
        unit = shown(page)
        assert unit["prompt"] in ("Hello", "The cat", "Once upon") and unit["pair"]
        act(page, "1")
    finally:
        stop(proc)
    assert lines(out) == [{"prompt": unit["prompt"], "chosen": unit["left"],
                           "rejected": unit["right"]}]
    meta = lines(out.with_name("ratings.meta.jsonl"))[0]
    assert meta["model"] == str(run) and meta["seed"] == 5 + meta["prompt_index"]
    assert meta["sampler"] == {"name": "top_k", "top_k": 20}


@pytest.mark.parametrize("case", ["missing_run", "port_in_use"])
def test_bad_input_from_the_command_line(case, candidates, tmp_path):
    out = tmp_path / "out" / "ratings.jsonl"
    out.parent.mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        args = (["--run", str(tmp_path / "missing"), "--prompts", str(candidates)]
                if case == "missing_run" else ["--candidates", str(candidates)])
        proc = subprocess.run([sys.executable, "-m", "kzoo.cli.rate", *args, "--out", str(out),
                               "--port", str(busy.getsockname()[1])],
                              capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    expected = "missing does not exist" if case == "missing_run" else "cannot listen on"
    assert len(err) == 1 and expected in err[0], proc.stderr
    assert list(out.parent.iterdir()) == []
