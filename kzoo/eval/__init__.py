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

import functools
import json
import logging
import os

# Before lm-eval imports `datasets` and `huggingface_hub`, which read these once.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kzoo.eval.model import KzooLM  # noqa: E402  (registers the model "kzoo")
from kzoo.eval.suite import SUITE, TASKS_DIR  # noqa: E402


def _not_the_custom_dataset_hint(record) -> bool:
    # lm-eval says this for every task with a `custom_dataset`, all of kzoo's: noise to a user
    return "Custom kwargs can be passed to `--metadata`" not in record.getMessage()


logging.getLogger("lm_eval.api.task").addFilter(_not_the_custom_dataset_hint)


def task_manager(include_paths=(), metadata=None):
    """An lm-eval `TaskManager` that knows kzoo's shipped tasks and the folders given.

    Indexing lm-eval's thousands of task YAMLs takes seconds, so a manager is made once per
    process for the same folders (as they are now: a folder's modification time is part of the
    key) and the same metadata, and reused.

    Args:
        include_paths: list of str or Path. more task folders (YAMLs with local data).
        metadata: dict or None. handed to every task it loads (lm-eval's `--metadata`): the
            data paths of `kzoo.eval.derived`'s tasks, `max_operand` of `kzoo_sums_gen`.

    Example:
    ```python
    "kzoo_arith_mc" in task_manager().all_tasks   # True
    ```
    """
    folders = tuple(str(p) for p in include_paths)
    stamps = tuple(os.stat(p).st_mtime_ns if os.path.isdir(p) else None for p in folders)
    key = json.dumps(dict(metadata or {}), sort_keys=True, default=str)
    return _task_manager(folders, stamps, key)


@functools.lru_cache(maxsize=16)
def _task_manager(folders: tuple, stamps: tuple, metadata: str):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(TASKS_DIR), *folders], metadata=json.loads(metadata))


__all__ = ["KzooLM", "SUITE", "TASKS_DIR", "task_manager"]
