"""`kzoo rate` without a browser: the records it writes train as they are (kzoo's readers and
TRL's column layout), the store survives crashes and refuses a second writer, and bad input
gets one line and exit code 2 with no file written."""

import json
import socket
import warnings

import pytest

from kzoo.cli.rate import main
from kzoo.cli.rate.server import JudgementError, RateApp
from kzoo.cli.rate.sources import read_candidates, units
from kzoo.cli.rate.store import RatingStore, sibling_paths

ITEMS = [
    {"prompt": "Q: 2+2?\nA:", "completions": [" 4", " 5"]},
    {"prompt": "Q: capital of France?\nA:", "completions": [" Paris", " Rome"]},
    {"prompt": "Q: opposite of hot?\nA:", "completions": [" cold", " warm"]},
    {"prompt": "Q: 3*3?\nA:", "completions": [" 9", " 6"]},
    {"prompt": "Q: a colour?\nA:", "completions": [" blue", " seven"]},
    {"prompt": "Say hi:", "completions": [" hi"]},
    {"prompt": "Say bye:", "completions": [" potato"]},
]


def write_candidates(path, items=ITEMS):
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


@pytest.fixture
def app(tmp_path):
    items = read_candidates(write_candidates(tmp_path / "candidates.jsonl"))
    store = RatingStore(tmp_path / "ratings.jsonl")
    yield RateApp(items, store, {"model": "test-model"})
    store.close()


def judge_all(app):
    """Judge every pair unit with one of each judgement; the units in judgement order."""
    done = []
    plan = ["left", "right", "edit", "tie", "both_bad", "up", "down"]
    for judgement in plan:
        unit = app.next_payload("tab", "pairs")["unit"]
        body = {"client": "tab", "mode": "pairs", "id": unit["id"], "judgement": judgement}
        if judgement == "edit":
            body.update(base="right", text=unit["completions"][1] + " (fixed)")
        assert app.judge(body)["recorded"]
        done.append((judgement, unit))
    return done


def test_records_are_what_each_judgement_means(app, tmp_path):
    done = judge_all(app)
    paths = sibling_paths(tmp_path / "ratings.jsonl")
    pairs = [json.loads(line) for line in paths["pairs"].read_text().splitlines()]
    kto = [json.loads(line) for line in paths["kto"].read_text().splitlines()]
    meta = [json.loads(line) for line in paths["meta"].read_text().splitlines()]
    (_, u_left), (_, u_right), (_, u_edit) = done[:3]
    assert pairs == [
        {"prompt": u_left["prompt"], "chosen": u_left["completions"][0],
         "rejected": u_left["completions"][1]},
        {"prompt": u_right["prompt"], "chosen": u_right["completions"][1],
         "rejected": u_right["completions"][0]},
        {"prompt": u_edit["prompt"], "chosen": u_edit["completions"][1] + " (fixed)",
         "rejected": u_edit["completions"][0]},
    ]
    assert kto == [{"prompt": "Say hi:", "completion": " hi", "label": True},
                   {"prompt": "Say bye:", "completion": " potato", "label": False}]
    assert [m["judgement"] for m in meta] == [j for j, _ in done]
    assert [m["file"] for m in meta] == ["pairs"] * 3 + [None, None] + ["kto"] * 2
    assert meta[2]["edited"] and meta[2]["original"] == u_edit["completions"][1]
    assert all(m["model"] == "test-model" and m["time"] for m in meta)
    assert app.next_payload("tab", "pairs")["unit"] is None
    assert app.next_payload("tab", "pairs")["progress"] == {"judged": 7, "total": 7}


def test_kzoo_readers_and_trl_layout_read_the_files_without_conversion(app, tmp_path):
    from datasets import load_dataset

    from kzoo.data.preference import encode_pairs, read_preference_records
    from kzoo.data.unpaired import encode_unpaired, read_unpaired_records
    from kzoo.tokenizers import ByteTokenizer

    judge_all(app)
    paths = sibling_paths(tmp_path / "ratings.jsonl")
    records, counts = read_preference_records(paths["pairs"], strict=True)
    assert counts["kept"] == 3
    arrays = encode_pairs(records, ByteTokenizer(), max_length=64, template="raw", strict=True)
    assert arrays["token_ids"].shape == (3, 2, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one up and one down: no one-sided warning
        unpaired, kto_counts = read_unpaired_records(paths["kto"], strict=True)
    assert (kto_counts["desirable"], kto_counts["undesirable"]) == (1, 1)
    assert encode_unpaired(unpaired, ByteTokenizer(), 64, template="raw")["token_ids"].shape[0] == 2
    # TRL's DPOTrainer / KTOTrainer read these columns from a `datasets` JSON data set.
    pair_set = load_dataset("json", data_files=str(paths["pairs"]), split="train")
    assert pair_set.column_names == ["prompt", "chosen", "rejected"]
    kto_set = load_dataset("json", data_files=str(paths["kto"]), split="train")
    assert kto_set.column_names == ["prompt", "completion", "label"]
    assert kto_set.features["label"].dtype == "bool"


def test_a_unit_judged_twice_is_recorded_once(app, tmp_path):
    unit = app.next_payload("tab1", "pairs")["unit"]
    other = app.next_payload("tab2", "pairs")["unit"]
    assert other["id"] != unit["id"], "a second tab gets another pair"
    body = {"client": "tab1", "mode": "pairs", "id": unit["id"], "judgement": "left"}
    assert app.judge(body)["recorded"]
    again = app.judge({**body, "client": "tab2", "judgement": "right"})
    assert not again["recorded"] and again["unit"]["id"] != unit["id"]
    assert len(sibling_paths(tmp_path / "ratings.jsonl")["pairs"].read_text().splitlines()) == 1


@pytest.mark.parametrize("body, message", [
    ({"judgement": "up"}, "expected one of"),
    ({"judgement": "edit", "base": "middle", "text": "x"}, "base 'middle'"),
    ({"judgement": "edit", "base": "left", "text": "  "}, "is empty"),
    ({"judgement": "sideways"}, "judgement 'sideways'"),
])
def test_bad_judgements_are_refused(app, body, message):
    unit = app.next_payload("tab", "pairs")["unit"]
    with pytest.raises(JudgementError, match=message):
        app.judge({"client": "tab", "mode": "pairs", "id": unit["id"], **body})
    assert not app.store.judged


def test_restart_reads_back_and_repairs_a_crash(tmp_path):
    paths = sibling_paths(tmp_path / "ratings.jsonl")
    store = RatingStore(paths["pairs"])
    assert store.add("a", "left", {"prompt": "p", "chosen": "x", "rejected": "y"}, "pairs", {})
    assert store.add("b", "tie", None, None, {})
    with pytest.raises(ValueError, match="another kzoo rate is writing it"):
        RatingStore(paths["pairs"])
    store.close()
    # A crash between the meta line and the data line, and a torn last meta line.
    with open(paths["meta"], "a") as f:
        f.write(json.dumps({"id": "c", "judgement": "right", "file": "pairs",
                            "record": {"prompt": "q", "chosen": "z", "rejected": "w"}}) + "\n")
        f.write('{"id": "d", "judgem')
    store = RatingStore(paths["pairs"])
    assert store.judged == {"a", "b", "c"} and store.counts == {"pairs": 2, "kto": 0, "none": 1}
    lines = [json.loads(line) for line in paths["pairs"].read_text().splitlines()]
    assert [r["chosen"] for r in lines] == ["x", "z"]
    assert paths["meta"].read_text().endswith("\n")
    assert not store.add("a", "right", {"prompt": "p", "chosen": "y", "rejected": "x"}, "pairs",
                         {})
    store.close()


def test_thumbs_mode_makes_one_unit_per_completion(tmp_path):
    items = read_candidates(write_candidates(tmp_path / "c.jsonl", ITEMS[:1] + ITEMS[5:6]))
    thumbs = units(items, "thumbs")
    assert [u["completions"] for u in thumbs] == [[" 4"], [" 5"], [" hi"]]
    assert thumbs[0]["id"].endswith(":0") and ":" not in thumbs[2]["id"]
    pair = units(items, "pairs")[0]
    assert sorted(pair["completions"]) == [" 4", " 5"]


def test_requests_another_site_could_make_are_refused(app):
    import threading
    import urllib.error
    import urllib.request

    from kzoo.cli.rate.server import make_server

    server = make_server("127.0.0.1", 0, app)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    unit = app.next_payload("tab", "pairs")["unit"]
    body = json.dumps({"client": "tab", "id": unit["id"], "judgement": "left"}).encode()

    def post(content_type, host=f"127.0.0.1:{port}"):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/judge", data=body,
                                         headers={"Content-Type": content_type, "Host": host})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    try:
        assert post("text/plain") == 403  # what a cross-site form can send
        assert post("application/json", host="evil.example:80") == 403  # DNS rebinding
        assert not app.store.judged
        assert post("application/json") == 200 and app.store.judged == {unit["id"]}
    finally:
        server.shutdown()
        server.server_close()


def _run(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("case", ["missing_run", "empty_prompts", "empty_candidates",
                                  "bad_candidate", "both_sources", "port_in_use", "bad_out",
                                  "bad_template"])
def test_bad_input_one_line_exit_2_nothing_written(case, tmp_path, capsys):
    out = tmp_path / "out" / "ratings.jsonl"
    out.parent.mkdir()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello\n")
    candidates = write_candidates(tmp_path / "c.jsonl")
    argv = {
        "missing_run": ["--run", str(tmp_path / "nope"), "--prompts", str(prompts)],
        "empty_prompts": ["--run", str(tmp_path), "--prompts",
                          str(_write(tmp_path / "empty.txt", "\n \n"))],
        "empty_candidates": ["--candidates", str(_write(tmp_path / "e.jsonl", ""))],
        "bad_candidate": ["--candidates",
                          str(_write(tmp_path / "b.jsonl", '{"prompt": "p", "completions": []}'))],
        "both_sources": ["--candidates", str(candidates), "--run", str(tmp_path)],
        "port_in_use": ["--candidates", str(candidates)],
        "bad_out": ["--candidates", str(candidates)],
        "bad_template": ["--run", str(tmp_path), "--prompts", str(prompts), "--template",
                         "alpacca"],
    }[case]
    expected = {"missing_run": "does not exist", "empty_prompts": "holds no prompts",
                "empty_candidates": "holds no candidates", "bad_candidate": "b.jsonl line 1",
                "both_sources": "not both", "port_in_use": "is another kzoo rate running",
                "bad_out": "must end in .jsonl", "bad_template": "--template 'alpacca'"}[case]
    target = str(out.with_suffix(".txt") if case == "bad_out" else out)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = _run([*argv, "--out", target, "--port", str(port)], capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert list(out.parent.iterdir()) == [], "bad input must write nothing"


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("template", ["chat", None])
def test_live_sampling_renders_the_prompt_as_the_model_is_trained_on(template):
    """With "chat" the model sees the prompt as a user turn in its chat template; the item
    keeps the prompt itself (what the DPO data file holds)."""
    import keras

    from kzoo.alignment.rollout import encode_prompts
    from kzoo.cli.rate.sources import LiveSampler, build_sampler
    from kzoo.generation import generate
    from kzoo.models import CausalLM
    from kzoo.tokenizers import ByteTokenizer

    keras.utils.set_random_seed(0)
    tok = ByteTokenizer()
    model = CausalLM(vocab_size=tok.vocab_size, num_layers=1, num_heads=2, hidden_dim=16,
                     intermediate_dim=32, max_sequence_length=128)
    sampler = build_sampler("top_k", {"k": 1})  # one choice per step: deterministic
    live = LiveSampler(model, tok, ["Say hi"], sampler, {"model": "tiny"}, seed=0,
                       max_new_tokens=4, template=template)
    live.start()
    live.join(120)
    assert live.error is None and live.items[0]["prompt"] == "Say hi"
    seen = (encode_prompts(["Say hi"], tok, 1 << 30, "chat")[0].tolist() if template
            else "Say hi")
    want = generate(model, [seen], 4, sampler, tok, stop_token_ids=tok.stop_token_ids)
    assert live.items[0]["completions"][0] == want.texts[0]
