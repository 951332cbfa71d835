"""`kzoo.backend.update_slice`: Keras' `slice_update` everywhere, except that a PyTorch decode
program writes its own caches in place. Runs on every backend (`make test` runs tests/generation
on TensorFlow, PyTorch and JAX)."""

import threading

import keras
import numpy as np
from keras import ops

from kzoo import backend


def _column_set(x, column, value):
    expected = np.array(x)
    expected[:, column] = value
    return expected


def test_outside_a_program_the_input_is_not_changed():
    x = ops.zeros((2, 4))
    out = backend.update_slice(x, [0, 1], ops.ones((2, 1)))
    np.testing.assert_array_equal(ops.convert_to_numpy(out), _column_set(np.zeros((2, 4)), 1, 1))
    np.testing.assert_array_equal(ops.convert_to_numpy(x), np.zeros((2, 4)))


def test_numpy_input_works_on_every_backend():
    out = backend.update_slice(np.zeros((2, 4), "float32"), [0, 3], np.ones((2, 1), "float32"))
    np.testing.assert_array_equal(ops.convert_to_numpy(out), _column_set(np.zeros((2, 4)), 3, 1))


def test_inside_a_program_the_result_is_the_update():
    def fill(x):
        for i in range(3):  # a Python loop, as the decode loops are on PyTorch
            x = backend.update_slice(x, [0, i], ops.full((2, 1), float(i + 1)))
        return x

    program = backend.compile_function(fill, list)
    out = ops.convert_to_numpy(program(ops.zeros((2, 4))))
    np.testing.assert_array_equal(out, [[1, 2, 3, 0], [1, 2, 3, 0]])


def test_torch_writes_in_place_only_in_the_programs_thread():
    """A program running in one thread must not make another thread's update_slice (outside any
    program) write into its input."""
    started, release = threading.Event(), threading.Event()
    seen = {}

    def slow(x):
        started.set()
        release.wait(10)
        return backend.update_slice(x, [0, 0], ops.ones((2, 1)))

    program = backend.compile_function(slow, list)
    inside = ops.zeros((2, 4))
    worker = threading.Thread(target=lambda: seen.setdefault("out", program(inside)))
    worker.start()
    assert started.wait(10)
    outside = ops.zeros((2, 4))
    backend.update_slice(outside, [0, 2], ops.ones((2, 1)))  # while the program runs
    release.set()
    worker.join(10)
    np.testing.assert_array_equal(ops.convert_to_numpy(outside), np.zeros((2, 4)))
    np.testing.assert_array_equal(ops.convert_to_numpy(seen["out"]),
                                  _column_set(np.zeros((2, 4)), 0, 1))
    if keras.backend.backend() == "torch":  # the program's own input was written in place
        np.testing.assert_array_equal(ops.convert_to_numpy(inside),
                                      ops.convert_to_numpy(seen["out"]))
