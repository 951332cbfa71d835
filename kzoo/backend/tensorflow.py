"""TensorFlow: programs compiled with `tf.function` (XLA), gradients with a `GradientTape`,
distribution with `tf.distribute`."""

import os

import tensorflow as tf


def compile_function(fn, variables, jit_compile, on_trace):
    # A tf.function reads the Keras variables it touches by reference: `variables` is unused.
    def traced(*args):
        on_trace()  # a Python side effect: runs once per trace
        return fn(*args)

    # No autograph: kzoo's programs are backend-neutral (they run under jax.jit, which has no
    # Python control flow on tensors either), so converting their Python to graph code only
    # costs: about 1 CPU s of a process's first trace (a first `generate` of gpt_nano 2.5 -> 1.5).
    return tf.function(traced, jit_compile=jit_compile, autograph=False)


def matmul_transposed(x, kernel, int_accumulate=False):
    # XLA's dot is 2-D here (and has an int8 kernel): fold the leading axes into rows.
    rows = tf.reshape(x, (-1, tf.shape(x)[-1]))  # (rows, in)
    if int_accumulate:  # int8 x int8 -> int32
        y = tf.matmul(rows, kernel, transpose_b=True, output_type=tf.int32)
    else:
        y = tf.matmul(rows, kernel, transpose_b=True)
    return tf.reshape(y, tf.concat([tf.shape(x)[:-1], tf.shape(y)[-1:]], 0))  # (..., out)


def apply_gradients(optimizer, compute_loss, variables):
    with tf.GradientTape() as tape:
        loss, aux = compute_loss()
        # Under a distribution strategy the optimizer scales the loss (mixed precision).
        scaled = optimizer.scale_loss(loss)
    grads = tape.gradient(scaled, variables)
    optimizer.apply(grads, variables)
    return loss, tf.nest.map_structure(tf.stop_gradient, aux)


def _replica_context():
    # None in a cross-replica context; one replica needs no all-reduce.
    context = tf.distribute.get_replica_context()
    return context if context is not None and context.num_replicas_in_sync > 1 else None


def replica_sum(x):
    context = _replica_context()
    return x if context is None else context.all_reduce(tf.distribute.ReduceOp.SUM, x)


def replica_mean(x):
    context = _replica_context()
    return x if context is None else context.all_reduce(tf.distribute.ReduceOp.MEAN, x)


def average_loss(per_example):
    # Sum over this replica's examples / the global batch: the replicas' gradients then add up.
    return tf.nn.compute_average_loss(per_example)


def control_dependencies(tensors):
    return tf.control_dependencies(tensors)


def train_jit_compile(jit_compile):
    return bool(jit_compile)


def is_concrete(tensor):
    # An EagerTensor has `.numpy()`; a graph tensor (tf.function, fit) has not.
    return tf.executing_eagerly() and isinstance(tensor, tf.Tensor) and hasattr(tensor, "numpy")


def clip_global_batch(grads, clip):
    # Keras clips each replica's gradient before the cross-replica sum: a partial gradient.
    # Sum first, clip the global gradient, divide by the replica count (the sum Keras takes
    # next gives back the clipped global gradient).
    context = _replica_context()
    if context is None:
        return clip(grads)
    replicas = context.num_replicas_in_sync
    present = [g for g in grads if g is not None]
    total = iter(context.all_reduce(tf.distribute.ReduceOp.SUM, present))
    summed = [None if g is None else next(total) for g in grads]
    return [None if g is None else g / replicas for g in clip(summed)]


DISTRIBUTIONS = ("data_parallel", "mirrored", "multi_worker", "none")


def split_cpu(logical_cpus):
    if logical_cpus <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current and len(current) == logical_cpus:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(logical_cpus)])
    except RuntimeError as error:
        raise ValueError(
            f"logical_cpus={logical_cpus} must be set before TensorFlow initializes its "
            f"devices (start a fresh process): {error}") from None


def distribution(strategy_name, logical_cpus):
    if strategy_name == "none":
        return tf.distribute.get_strategy()
    if strategy_name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "distribution 'multi_worker' needs the TF_CONFIG environment variable, e.g. "
                '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
                '"task": {"type": "worker", "index": 0}}')
        split_cpu(logical_cpus)
        return tf.distribute.MultiWorkerMirroredStrategy()
    split_cpu(logical_cpus)  # data_parallel, mirrored
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=devices)
