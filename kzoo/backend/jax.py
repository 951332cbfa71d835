"""JAX: pure programs under `jax.jit`, with every Keras variable they read passed in as a value.

A Keras variable read inside `jax.jit` would be baked into the program as a constant (stale
after training, and copied into the executable). `compile_function` runs `fn` inside a
`keras.StatelessScope` that maps each variable to an argument of the jitted function, so the
program reads the values of the call; `fn` must return what it changes (the decode loops carry
their sampler's seed state explicitly).
"""

import contextlib
import functools

import jax
import keras
from keras.src.backend.common.stateless_scope import get_stateless_scope


def compile_function(fn, variables, jit_compile, on_trace, donate=()):
    held = []

    def pure(values, donated, kept):
        on_trace()  # a Python side effect: runs while jax.jit traces
        args = list(kept)
        for i, value in zip(donate, donated):  # back in their places (`donate` is ascending)
            args.insert(i, value)
        with keras.StatelessScope(state_mapping=list(zip(held, values))):
            return fn(*args)

    donate = tuple(sorted(donate))
    program = jax.jit(pure, donate_argnums=(1,) if donate else ()) if jit_compile else pure

    @functools.wraps(fn)
    def call(*args):
        if not held:  # the model is built by the first call
            held.extend(variables())
        donated = tuple(args[i] for i in donate)
        kept = tuple(a for i, a in enumerate(args) if i not in donate)
        return program([v.value for v in held], donated, kept)

    return call


def matmul_transposed(x, kernel, int_accumulate=False):
    dims = (((x.ndim - 1,), (1,)), ((), ()))  # x's last axis with kernel's: x @ kernel.T
    return jax.lax.dot_general(x, kernel, dims,
                               preferred_element_type="int32" if int_accumulate else None)


# Custom train steps. Keras' JAX trainer calls `model.train_step(state, data)` with the values of
# (trainable, non-trainable, optimizer, metrics) variables and jits it; kzoo's steps are written
# statefully, `train_step(self, data)`. `stateful_step` runs such a body inside a
# `keras.StatelessScope` mapping every variable to its state value: each read sees the traced
# value and each assignment (optimizer, metric trackers, dropout seeds) is recorded in the scope,
# read back as the new state at the end. That is what Keras' own `stateless_call` and
# `stateless_apply` do, for a whole step instead of one call.


def stateful_step(step):
    @functools.wraps(step)
    def run(self, state, data):
        groups = _state_variables(self, len(state))
        mapping = [(v, value) for variables, values in zip(groups, state)
                   for v, value in zip(variables, values)]
        with keras.StatelessScope(state_mapping=mapping) as scope:
            logs = step(self, data)
        return logs, tuple([scope.get_current_value(v) for v in variables]
                           for variables in groups)

    return run


def _state_variables(model, parts):
    # The order of Keras' JAX trainer: 4 parts for train_step, 3 (no optimizer) for test_step.
    if parts == 4:
        return (model.trainable_variables, model.non_trainable_variables,
                model.optimizer.variables, model.metrics_variables)
    return model.trainable_variables, model.non_trainable_variables, model.metrics_variables


class _RecordingScope(keras.StatelessScope):
    """A StatelessScope over `base` (an outer scope's values) that also keeps the variables
    assigned in it, so their new values can leave a `jax.value_and_grad` as aux."""

    def __init__(self, base, state_mapping):
        super().__init__(state_mapping=state_mapping)
        self.state_mapping = {**base, **self.state_mapping}
        self.assigned = {}

    def add_update(self, update):
        super().add_update(update)
        self.assigned[id(update[0])] = update[0]


def apply_gradients(optimizer, compute_loss, variables):
    # Scopes do not nest (a variable reads the innermost one only): the scope inside the grad
    # starts from every value of the outer one, with the differentiated values on top.
    outer = get_stateless_scope()
    base = dict(outer.state_mapping) if outer is not None else {}
    assigned = []

    def loss_of(values):
        with _RecordingScope(base, list(zip(variables, values))) as scope:
            loss, aux = compute_loss()
            scaled = optimizer.scale_loss(loss)
        assigned[:] = scope.assigned.values()
        return scaled, (loss, aux, [scope.get_current_value(v) for v in assigned])

    (_, (loss, aux, updates)), grads = jax.value_and_grad(loss_of, has_aux=True)(
        [v.value for v in variables])
    for v, value in zip(assigned, updates):
        v.assign(value)  # recorded by the outer scope, or a real assignment outside one
    optimizer.apply(grads, variables)
    return loss, jax.tree.map(jax.lax.stop_gradient, aux)


def replica_sum(x):
    # A jitted JAX program (sharded by keras.distribution or not) sees the global batch.
    return x


def replica_mean(x):
    return x


def average_loss(per_example):
    return keras.ops.mean(per_example)


def control_dependencies(tensors):
    # XLA orders the program itself.
    return contextlib.nullcontext()


def train_jit_compile(jit_compile):
    return bool(jit_compile)


def is_concrete(tensor):
    return isinstance(tensor, jax.Array) and not isinstance(tensor, jax.core.Tracer)


def clip_global_batch(grads, clip):
    # One program over the global batch (keras.distribution included): no partial gradients.
    return clip(grads)


DISTRIBUTIONS = ("data_parallel", "fsdp", "mirrored", "none", "tensor_parallel")
MODEL_PARALLEL = ("fsdp", "tensor_parallel")


def split_cpu(logical_cpus):
    if logical_cpus <= 1:
        return
    try:  # before asking for devices: asking initializes the backends, which fixes the count
        jax.config.update("jax_num_cpu_devices", logical_cpus)
    except RuntimeError:
        if len(jax.devices("cpu")) == logical_cpus:  # set already (XLA_FLAGS, earlier call)
            return
        raise ValueError(
            f"logical_cpus={logical_cpus} must be set before JAX initializes its devices "
            "(start a fresh process, or set XLA_FLAGS=--xla_force_host_platform_device_count"
            f"={logical_cpus})") from None


def distribution(strategy_name, logical_cpus, mesh=None):
    from kzoo.backend import KerasStrategy

    if strategy_name == "none":
        return KerasStrategy()
    split_cpu(logical_cpus)
    devices = keras.distribution.list_devices()
    if strategy_name not in MODEL_PARALLEL:  # data_parallel, mirrored
        return KerasStrategy(keras.distribution.DataParallel(devices=devices), len(devices))
    mesh = mesh or {"batch": 1, "model": len(devices)}  # no mesh: every device on `model`
    if mesh["batch"] * mesh["model"] != len(devices):
        raise ValueError(f"mesh {{batch: {mesh['batch']}, model: {mesh['model']}}} holds "
                         f"{mesh['batch'] * mesh['model']} devices but {len(devices)} are "
                         "available; make batch x model equal the device count")
    device_mesh = keras.distribution.DeviceMesh(
        (mesh["batch"], mesh["model"]), ("batch", "model"), devices)
    # Filled with the model's layouts once its arguments are known (distribute.lay_out):
    # ModelParallel reads the map when each variable is created.
    layouts = keras.distribution.LayoutMap(device_mesh)
    return KerasStrategy(keras.distribution.ModelParallel(
        layout_map=layouts, batch_dim_name="batch"), mesh["batch"], strategy_name, layouts)
