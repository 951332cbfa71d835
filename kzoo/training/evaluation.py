"""The `eval:` section of the training recipes: lm-eval tasks scored before and after training.

A recipe with `eval.tasks` set loads the tasks (their data included) before it trains, so a
wrong task name or a missing data file is one line and nothing runs; then it scores the model
as it starts and as it ends with `kzoo.eval` (the lm-eval model `kzoo`) and writes both, and
their difference, under `"eval"` in the run's `metrics.json`. Needs the `eval` extra
(`pip install "kzoo[eval]"`); with no tasks nothing is imported.

Example:
```yaml
eval:
  tasks: [kzoo_arith_mc, kzoo_pydocs_ppl]
  limit: 50
```
"""

from __future__ import annotations

import dataclasses
import math

from kzoo.training.config import checked


@dataclasses.dataclass
class EvalConfig:
    tasks: list[str] = dataclasses.field(default_factory=list)  # lm-eval tasks; empty: none
    limit: int | None = checked(None, "positive")  # the first N documents of each task
    batch_size: int = checked(8, "positive")
    include_path: list[str] = dataclasses.field(default_factory=list)  # more task folders
    # handed to every task (lm-eval's --metadata): data paths, kzoo_sums_gen's max_operand
    metadata: dict = dataclasses.field(default_factory=dict)


class RecipeEval:
    """The tasks of an `eval:` section, loaded up front, scored on a model any number of times.

    Args:
        config: EvalConfig. the section.

    Raises:
        ValueError: one line: the `eval` extra is missing, an unknown task, a missing data file.
    """

    def __init__(self, config: EvalConfig):
        self.config = config
        self.enabled = bool(config.tasks)
        if not self.enabled:
            return
        try:
            import kzoo.eval  # noqa: F401  (registers the lm-eval model)
        except ImportError as error:
            raise ValueError(f"eval.tasks needs lm-eval ({error.name} is not installed): "
                             'pip install "kzoo[eval]"') from None
        from kzoo.eval import task_manager
        from kzoo.eval.run import check_include_paths, load_tasks

        self.manager = task_manager(check_include_paths(config.include_path), config.metadata)
        self.tasks = load_tasks(list(config.tasks), self.manager)

    def score(self, model, tokenizer) -> dict | None:
        """{task: {metric: value}} of `model` now (numbers only), or None without tasks."""
        if not self.enabled:
            return None
        import lm_eval

        from kzoo.eval import KzooLM

        lm = KzooLM(model=model, tokenizer=tokenizer, batch_size=self.config.batch_size)
        out = lm_eval.simple_evaluate(model=lm, tasks=self.tasks, limit=self.config.limit,
                                      task_manager=self.manager, random_seed=0,
                                      numpy_random_seed=0, torch_random_seed=0,
                                      fewshot_random_seed=0)
        return {task: {k: float(v) for k, v in metrics.items()
                       if isinstance(v, int | float) and not isinstance(v, bool)
                       and "stderr" not in k and k != "sample_len"}  # a count, not a score
                for task, metrics in out["results"].items()}


def compare(before: dict | None, after: dict | None) -> dict | None:
    """`{"before", "after", "change"}` of two `RecipeEval.score` results (None without)."""
    if before is None or after is None:
        return None
    change = {task: {k: after[task][k] - v for k, v in metrics.items()
                     if k in after.get(task, {}) and math.isfinite(v)}
              for task, metrics in before.items()}
    return {"before": before, "after": after, "change": change}
