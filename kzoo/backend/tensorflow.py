"""TensorFlow: gradients with a `GradientTape` (inside Keras' compiled train function)."""

import tensorflow as tf


def apply_gradients(optimizer, compute_loss, variables):
    with tf.GradientTape() as tape:
        loss, aux = compute_loss()
        # Under a distribution strategy the optimizer scales the loss (mixed precision).
        scaled = optimizer.scale_loss(loss)
    grads = tape.gradient(scaled, variables)
    optimizer.apply(grads, variables)
    return loss, tf.nest.map_structure(tf.stop_gradient, aux)
