"""TensorFlow: programs compiled with `tf.function` (XLA), gradients with a `GradientTape`."""

import tensorflow as tf


def compile_function(fn, variables, jit_compile, on_trace):
    from kzoo.backend import counting

    # A tf.function reads the Keras variables it touches by reference: `variables` is unused.
    return tf.function(counting(fn, on_trace), jit_compile=jit_compile)


def matmul_transposed(x, kernel, int_accumulate=False):
    if int_accumulate:  # int8 x int8 -> int32 (XLA's CPU dot has an int8 kernel)
        return tf.matmul(x, kernel, transpose_b=True, output_type=tf.int32)
    return tf.matmul(x, kernel, transpose_b=True)


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
