"""What the suite's YAMLs name with `!function` (lm-eval imports this file by its path)."""

from kzoo.eval import derived
from kzoo.eval.suite import load_split_files, process_multiple_choice


def arithmetic(**_):
    """The arithmetic tasks' data: 40 few-shot examples and 200 test sums."""
    return load_split_files("kzoo_arith", train="arith_fewshot.jsonl", test="arith_test.jsonl")


def pydocs(**_):
    """The held-out pydocs passages."""
    return load_split_files("kzoo_pydocs_ppl", test="pydocs_heldout.jsonl")


process_mc = process_multiple_choice

# Tasks made at load time from the recipes' own data (kzoo.eval.derived).
shakespeare = derived.shakespeare
instructions = derived.instructions
sums = derived.sums
process_response = derived.response_bits
