import numpy as np
import pytest

from kzoo.alignment import feedback_loop as fl


def test_rater_is_exact():
    assert fl.rate(7, 13, "20", True)
    assert not fl.rate(7, 13, "20", False)  # cut at the length limit: not an answer
    assert not fl.rate(7, 13, "21", True)
    assert not fl.rate(3, 4, "7", True)  # must be zero-padded to 2 digits
    assert fl.rate(3, 4, "07", True)


def test_noisy_corpus_has_the_configured_noise():
    config = fl.LoopConfig(max_operand=10, correct_fraction=0.4, wrong_spread=2,
                           lines_per_problem=200)
    lines = fl.noisy_corpus([(3, 4), (0, 0)], config, np.random.default_rng(0))
    answers = [(int(t[:2]) + int(t[3:5]), int(t[6:])) for t in lines]
    correct = np.mean([s == a for s, a in answers])
    assert abs(correct - 0.4) < 0.06
    assert all(a != s and abs(a - s) <= 2 and a >= 0 for s, a in answers if a != s) and any(
        a != s for s, a in answers)
    tok = fl.make_tokenizer()
    rows = fl.encode_lines(tok, lines[:3])
    assert rows.shape == (3, 9) and (rows[:, -1] == tok.eot_id).all()


def test_make_pairs_pairs_correct_with_wrong_of_the_same_prompt():
    samples = [(1, 2, "03", True), (1, 2, "04", True), (1, 2, "03", False), (1, 2, "05", True),
               (5, 5, "10", True), (6, 6, "11", True)]
    pairs = fl.make_pairs(samples, pairs_per_prompt=4, rng=np.random.default_rng(0))
    assert sorted(p["rejected"] for p in pairs) == ["03", "04", "05"]  # "03" unfinished is wrong
    assert all(p["prompt"] == "01+02=" and p["chosen"] == "03" for p in pairs)
    # (5, 5) has no wrong sample and (6, 6) no right one: no pairs from them


def test_bad_config_is_a_value_error():
    with pytest.raises(ValueError, match="max_operand"):
        fl.run_feedback_loop(fl.LoopConfig(max_operand=60), log=lambda *a: None)


def test_tiny_loop_runs_end_to_end_with_control():
    config = fl.LoopConfig(
        max_operand=6, lines_per_problem=32, held_out_fraction=0.3, pretrain_epochs=12,
        pretrain_batch_size=32, samples_per_prompt=8, eval_samples_per_prompt=8, rounds=1,
        dpo_epochs=1, model=dict(num_layers=1, num_heads=2, hidden_dim=16,
                                 max_sequence_length=16), num_show=2,
    )
    report = fl.run_feedback_loop(config, log=lambda *a: None)
    assert report["problems"] == {"train": 25, "held_out": 11}
    assert report["samples_per_rate"] == 11 * 8
    for part in ("before", "after", "control"):
        assert 0.0 <= report[part]["rate"] <= 1.0
        assert np.isfinite(report[part]["val_loss"])
    for part in ("after", "control"):
        assert 0.0 <= report[part]["implicit_reward_accuracy"] <= 1.0
        assert np.isfinite(report[part]["kl_to_reference"])
    assert 0 < report["control"]["flipped_pairs"] < report["control"]["pairs_per_round"][0]
    assert len(report["examples"]) == 2
    assert report["examples"][0]["answer"] == str(
        int(report["examples"][0]["prompt"][:2]) + int(report["examples"][0]["prompt"][3:5])
    ).zfill(2)
    assert set(report["dpo_history"]) >= {"loss", "rewards/accuracy", "logps/chosen"}
