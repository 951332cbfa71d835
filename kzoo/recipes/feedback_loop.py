"""The feedback loop in miniature: pre-train, sample, rate, DPO, measure -- on a CPU.

    python recipes/feedback_loop.py --config recipes/configs/gpt/nano_arithmetic_dpo.yaml
    kzoo feedback_loop --config gpt/nano_arithmetic_dpo
    python recipes/feedback_loop.py --config CONFIG --set loop.rounds=3 --set loop.control=false

A small model is pre-trained on noisy addition ("07+13=20", right only part of the time);
completions sampled at temperature 1 are rated by an exact checker (is it the correct sum?);
the ratings become chosen/rejected pairs for DPO; the rate of correct answers on held-out
prompts is reported before and after, with the KL to the reference, the validation loss, the
held-out implicit-reward accuracy and a control run with shuffled preferences. See
`kzoo.alignment.feedback_loop` for the details. The run folder gets config.yaml, report.json
and report.md.
"""

import dataclasses
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kzoo.alignment.feedback_loop import LoopConfig  # noqa: E402
from kzoo.training.evaluation import EvalConfig, RecipeEval  # noqa: E402
from kzoo.training.recipe import run_recipe  # noqa: E402


@dataclasses.dataclass
class FeedbackConfig:
    run_dir: str = "runs/feedback_loop"
    loop: LoopConfig = dataclasses.field(default_factory=LoopConfig)
    # lm-eval tasks scored on the pre-trained model, the DPO policy and the control, into
    # report.json's "eval" and the report's table (kzoo.training.evaluation); kzoo_sums_gen's
    # max_operand defaults to the loop's
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)


def eval_columns(report: dict) -> list[tuple[str, str]]:
    """The (task, metric) pairs of the report's lm-eval scores, in a fixed order."""
    before = (report.get("eval") or {}).get("before") or {}
    return [(task, metric) for task in sorted(before) for metric in sorted(before[task])]


def _eval_cells(report: dict, which: str) -> str:
    scores = (report.get("eval") or {}).get(which) or {}
    return "".join(f" {scores.get(task, {}).get(metric, float('nan')):.4g} |"
                   for task, metric in eval_columns(report))


def markdown(report: dict) -> str:
    """The report's figures as a markdown table plus before/after samples."""
    rows = [("before (pre-trained)", "before", report["before"])]
    rows.append(("after DPO", "after", report["after"]))
    if "control" in report:
        rows.append(("control (shuffled preferences)", "control", report["control"]))
    columns = eval_columns(report)
    lines = ["| model | correct rate | val loss | val loss, answer tokens | KL to reference "
             "| held-out implicit-reward acc. |"
             + "".join(f" {task} {metric.split(',')[0]} |" for task, metric in columns),
             "|---|---|---|---|---|---|" + "---|" * len(columns)]
    for name, which, r in rows:
        kl = r.get("kl_to_reference")
        acc = r.get("implicit_reward_accuracy")
        lines.append(f"| {name} | {r['rate']:.1%} | {r['val_loss']:.4f} | "
                     f"{r['val_answer_loss']:.4f} | {'' if kl is None else f'{kl:.3f}'} | "
                     f"{'' if acc is None else f'{acc:.1%}'} |" + _eval_cells(report, which))
    b, a = report["before"], report["after"]
    lines += [
        "",
        f"Rate change: {100 * (a['rate'] - b['rate']):+.1f} points (standard error of one rate: "
        f"{100 * report['rate_standard_error']:.1f} points, {report['samples_per_rate']} samples)."
        f" Validation loss change: {100 * (a['val_loss'] / b['val_loss'] - 1):+.1f}%.",
        "",
        "| held-out prompt | answer | samples before | samples after |",
        "|---|---|---|---|",
    ]
    for ex in report["examples"]:
        lines.append(f"| `{ex['prompt']}` | {ex['answer']} | {' '.join(ex['before'])} | "
                     f"{' '.join(ex['after'])} |")
    return "\n".join(lines) + "\n"


def run(config: FeedbackConfig) -> dict:
    from kzoo.alignment.feedback_loop import run_feedback_loop
    from kzoo.training import open_run, rerun_header, save_config

    config.eval.metadata.setdefault("max_operand", config.loop.max_operand)
    evaluation = RecipeEval(config.eval)  # tasks and their data checked before any work
    with open_run(config.run_dir, "feedback_loop") as run:
        save_config(config, run.config,
                    header=rerun_header("feedback-loop", run.config))
        report = run_feedback_loop(config.loop,
                                   score=evaluation.score if evaluation.enabled else None)
        (run.root / "report.json").write_text(json.dumps(report, indent=1))
        (run.root / "report.md").write_text(markdown(report))
        run.mark("feedback_loop", "finished")
    return report


def main(argv=None) -> int:
    return run_recipe(__doc__, FeedbackConfig, run, argv, example="loop.rounds=3",
                      report=markdown)

if __name__ == "__main__":
    sys.exit(main())
