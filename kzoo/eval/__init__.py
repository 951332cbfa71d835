"""kzoo models under EleutherAI's lm-evaluation-harness (lm-eval), and kzoo's offline tasks.

Importing this package registers `KzooLM` with lm-eval as the model `kzoo` and points the
Hugging Face libraries at their offline mode (`HF_DATASETS_OFFLINE`, `HF_HUB_OFFLINE`):
evaluation reads local files only. Needs the `eval` extra (`pip install kzoo[eval]`).

    kzoo eval runs/gpt_nano_pydocs --tasks kzoo_arith_mc,kzoo_pydocs_ppl
    python -m kzoo.eval run --model kzoo --model_args pretrained=runs/sft --tasks kzoo_arith_gen

Example:
```python
import lm_eval
from kzoo.eval import KzooLM, task_manager
lm = KzooLM(pretrained="runs/gpt_nano_pydocs", batch_size=16)
out = lm_eval.simple_evaluate(model=lm, tasks=["kzoo_arith_mc"], limit=50,
                              task_manager=task_manager())
out["results"]["kzoo_arith_mc"]["acc,none"]
```
"""

import os

# Before lm-eval imports `datasets` and `huggingface_hub`, which read these once.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kzoo.eval.model import KzooLM  # noqa: E402  (registers the model "kzoo")
from kzoo.eval.suite import SUITE, TASKS_DIR  # noqa: E402


def task_manager(include_paths=()):
    """An lm-eval `TaskManager` that knows kzoo's shipped tasks and the folders given.

    Args:
        include_paths: list of str or Path. more task folders (YAMLs with local data).

    Example:
    ```python
    "kzoo_arith_mc" in task_manager().all_tasks   # True
    ```
    """
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(TASKS_DIR), *map(str, include_paths)])


__all__ = ["KzooLM", "SUITE", "TASKS_DIR", "task_manager"]
