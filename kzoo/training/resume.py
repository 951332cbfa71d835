"""Resuming a run at its exact global step, and what may change when it resumes.

A checkpoint records the optimizer's step; a resumed run continues there whatever its new
`eval_interval` or `steps_per_execution`. Settings that define the model and data
(`IDENTITY`) never change on a resume; settings that only say how the run is watched and
written (`FREE`) may; any other change (learning rate, steps, schedule, batch size, seed) is
refused and named unless the config says `resume: override`, and every resume is recorded in
the folder's `resumes.jsonl`.

The devices may change too: a checkpoint holds whole arrays (`.weights.h5`) or a sharded
run's shards (Orbax, `kzoo.training.checkpoints`), and loading either under another mesh,
distribution or number of processes lays each array out as the new run's layouts say
(resharding). Each checkpoint's state records the sharding it was trained
under (`sharding_of`); a resume under another one adds `"sharding": [saved, now]` to the
record's changes, also when only the device count changed and the config did not (a mesh of
`null` puts every device on the model axis, however many there are).

>>> interval_plan(0, 10, 5)
[(2, 5)]
"""

from __future__ import annotations

from kzoo.training.config import config_to_dict, load_config
from kzoo.training.run_folder import RunDir, RunFolderError

# What a checkpoint means: a resume never changes these.
IDENTITY = ("data", "tokenizer", "model", "train.block_size", "train.precision")
# How a run is watched and written, not what it computes: free to change on a resume.
FREE = ("run_dir", "resume", "sample", "train.eval_interval", "train.val_batches",
        "train.steps_per_execution", "train.verbose", "train.tensorboard",
        "train.jit_compile", "train.distribution", "train.mesh", "train.logical_cpus",
        "train.keep_backups", "train.max_loss_factor", "eval")


def sharding_of(strategy) -> dict:
    """How a run's state is laid out under `strategy`: the sharded layout and its mesh, or the
    number of replicas holding whole copies.

    >>> from kzoo.backend import KerasStrategy
    >>> sharding_of(KerasStrategy())
    {'layout': None, 'replicas': 1}
    """
    mesh = getattr(getattr(strategy, "layout_map", None), "device_mesh", None)
    if mesh is not None:
        return {"layout": strategy.layout,
                "mesh": {axis: int(n) for axis, n in zip(mesh.axis_names, mesh.shape)}}
    return {"layout": None, "replicas": int(strategy.num_replicas_in_sync)}


def note_sharding(state: dict, strategy, changed: dict | None) -> None:
    """Record in `state` (what the next checkpoints store) the sharding of `strategy`; when
    resuming from a checkpoint saved under another one, add `"sharding": [saved, now]` to
    `changed` (the resume record's changes). Checkpoints older than this record say nothing,
    and nothing is added for them.

    Args:
        state: dict. the restored checkpoint's state ({} for a new run); updated in place.
        strategy: what `kzoo.training.distribute.get_strategy` returned for this run.
        changed: dict | None. the resume's changes (`resume_point`), updated in place; None
            when the run does not resume.

    >>> from kzoo.backend import KerasStrategy
    >>> state, changed = {"sharding": {"layout": None, "replicas": 2}}, {}
    >>> note_sharding(state, KerasStrategy(), changed)
    >>> saved, now = changed["sharding"]
    >>> saved["replicas"], now["replicas"]
    (2, 1)
    """
    now = sharding_of(strategy)
    saved = state.get("sharding")
    if changed is not None and saved is not None and saved != now:
        changed["sharding"] = [saved, now]
    state["sharding"] = now


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        # model.args and train.mesh are one setting each: their changes are named whole
        if isinstance(value, dict) and value and prefix + key not in ("model.args", "train.mesh"):
            out.update(_flatten(value, prefix + key + "."))
        else:
            out[prefix + key] = value
    return out


def _changes(config, run: RunDir) -> tuple[dict, dict]:
    """Settings that differ from the folder's config.yaml, all of them and those that change
    what training computes (which need `resume: override`), each {key: [saved, now]}.

    Raises:
        ValueError: an identity setting changed (the checkpoint is of another model).
    """
    try:
        saved = load_config(run.config, type(config))
    except ValueError as error:
        raise RunFolderError(f"cannot resume {run.root}: {error}") from None
    old, new = _flatten(config_to_dict(saved)), _flatten(config_to_dict(config))
    changed = {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k)}
    within = lambda key, names: any(key == n or key.startswith(n + ".") for n in names)  # noqa: E731
    fixed = sorted({n for n in IDENTITY for k in changed if within(k, (n,))})
    if fixed:
        raise ValueError(
            f"{run.root} holds a checkpoint of a different run (changed: {', '.join(fixed)}); "
            "use another run_dir or restore those settings"
        )
    return changed, {k: v for k, v in changed.items() if not within(k, FREE)}


def _describe_changes(changed: dict) -> str:
    return "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())


def interval_plan(start: int, steps: int, interval: int) -> list[tuple[int, int]]:
    """`fit` calls that take a run from global step `start` to `steps`: (epochs, length).

    Intervals end at multiples of `interval` (and at `steps`), whatever step the run resumed
    from, so validation, logging and backups stay on the same grid.

    >>> interval_plan(0, 10, 5)
    [(2, 5)]
    >>> interval_plan(3, 12, 5)
    [(1, 2), (1, 5), (1, 2)]
    """
    lengths, step = [], start
    while step < steps:
        end = min((step // interval + 1) * interval, steps)
        lengths.append(end - step)
        step = end
    plan = []
    for length in lengths:
        if plan and plan[-1][1] == length:
            plan[-1] = (plan[-1][0] + 1, length)
        else:
            plan.append((1, length))
    return plan


def check_plan(plan, start: int, spe: int) -> None:
    # Keras runs whole executions of `steps_per_execution` steps: an interval must hold
    # a whole number of them, or the run would overshoot its step count.
    for _, length in plan:
        if length % spe:
            raise ValueError(
                f"train.steps_per_execution={spe} does not divide an interval of {length} "
                f"steps (intervals end at multiples of train.eval_interval and at train.steps, "
                f"counted from step {start}); choose a value that divides them")


def resume_point(config, run: RunDir) -> tuple[bool, dict, bool]:
    """Whether `run` resumes, the settings changed since it was saved, and whether any of
    them changes what training computes (allowed only with `resume: override`)."""
    if not run.has_checkpoint():
        # best.keras alone is a first interval cut short: this recipe made it, and redoes it.
        if run.model.exists() or run.finished():
            raise RunFolderError(
                f"{run.root} holds a trained model ({run.model.name}) but no checkpoint to "
                f"resume from in {run.backup}; kzoo will not train over it: choose another "
                "run_dir")
        return False, {}, False
    changed, training = _changes(config, run)
    if training and config.resume != "override":
        raise RunFolderError(
            f"{run.root} was trained with other settings ({_describe_changes(training)}); "
            "restore them, or add --set resume=override to continue under the new ones")
    return True, changed, bool(training)
