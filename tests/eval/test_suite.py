"""The shipped task data is what `kzoo.eval.suite` makes, and its metrics are right."""

import json
import sys

import pytest

from kzoo.eval import suite


def _shipped(name):
    text = (suite.DATA_DIR / name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def test_arithmetic_data_is_regenerated_exactly():
    made = suite.suite_data()
    for name in ("arith_fewshot.jsonl", "arith_test.jsonl"):
        assert _shipped(name) == made[name]
    for problem in made["arith_test.jsonl"]:
        a, b = (int(x) for x in problem["question"].split(":")[1].split("=")[0].split("+"))
        assert problem["choices"][problem["label"]] == problem["answer"] == str(a + b)
        assert len(set(problem["choices"])) == 4
    labels = [p["label"] for p in made["arith_test.jsonl"]]
    assert min(labels.count(k) for k in range(4)) > 30  # the right answer moves around


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="made from CPython 3.11's pydocs")
def test_pydocs_passages_are_the_held_out_tail():
    from kzoo.data.sources import pydocs_documents

    assert _shipped("pydocs_heldout.jsonl") == suite.suite_data()["pydocs_heldout.jsonl"]
    docs = pydocs_documents()
    tail = "\n\n".join(docs[int(len(docs) * 0.9):])
    passages = _shipped("pydocs_heldout.jsonl")
    assert len(passages) > 20 and all(p["text"] in tail for p in passages)


def test_centred_accuracy_and_choice_scoring():
    assert suite.centered(0.25, 4) == 0 and suite.centered(1.0, 4) == 1
    assert suite.centered(0.625, 4) == pytest.approx(0.5)
    doc = {"label": 1, "choices": ["7", "12", "100"]}
    got = suite.process_multiple_choice(doc, [(-3.0, False), (-2.5, False), (-3.3, False)])
    assert got == {"acc": 1.0, "acc_norm": 0.0, "acc_centered": 1.0}
    got = suite.process_multiple_choice(doc, [(-1.0, True), (-2.5, False), (-6.0, False)])
    assert got["acc"] == 0.0 and got["acc_centered"] == pytest.approx(-0.5)
