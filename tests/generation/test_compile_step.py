"""`kzoo.backend.compile_step`: on PyTorch a one-token decode step is traced once per signature
into a graph of ATen ops and replayed; elsewhere it is the function itself. Runs on every backend
(`make test` runs tests/generation on TensorFlow, PyTorch and JAX); the tests of the traced step
run where the backend is PyTorch (elsewhere `Generator(jit_compile=False)` is another compile
mode, not the same loop without the trace).

What a trace could get wrong, and the test that would see it: weights baked in as constants
(new weights after training), a tensor value read in Python frozen into the graph (a cache slot
that moves every token), a read after an in-place write merged with the read before it, views
replayed with the layout of other inputs, a new trace every token.
"""

import keras
import numpy as np
import pytest
from keras import ops

from kzoo import backend, samplers
from kzoo.generation import Generator
from kzoo.models import CausalLM

torch_only = pytest.mark.skipif(backend.name() != "torch", reason="traces only on PyTorch")

PROMPTS = [[5, 6, 7, 8, 9], [3, 4]]  # ragged: left padding and a padding mask


def _program(fn):
    """`fn` inside a decode program (PyTorch: no autograd, in-place cache writes)."""
    return backend.compile_function(fn, list)


def test_a_step_returns_what_the_function_returns():
    def fn(pair, scale):
        x, y = pair
        return {"sum": x + y * scale, "first": x}

    step = backend.compile_step(fn)
    x, y = ops.ones((2, 3)), ops.arange(6, dtype="float32")
    out = _program(lambda a, b: step((a, ops.reshape(b, (2, 3))), 2.0))(x, y)
    np.testing.assert_allclose(ops.convert_to_numpy(out["sum"]),
                               1 + 2 * np.arange(6).reshape(2, 3))
    np.testing.assert_allclose(ops.convert_to_numpy(out["first"]), np.ones((2, 3)))


@torch_only
@pytest.mark.parametrize("preset", ["gpt_nano", "llama_nano"])
@pytest.mark.parametrize("sampler", [("greedy", {}), ("beam", {"num_beams": 2}),
                                     ("top_k", {"k": 5, "seed": 1})])
def test_generation_equals_the_untraced_step(preset, sampler):
    """Same tokens and log-probs as `jit_compile=False` (the step's Python each token): GPT
    (learned positions, GELU) and Llama (RoPE, grouped K/V heads, SwiGLU), ragged prompts,
    greedy, beam search and seeded sampling."""
    name, kwargs = sampler
    keras.utils.set_random_seed(3)
    model = CausalLM.from_preset(preset, vocab_size=97)
    traced_generator = Generator(model, samplers.get(name, **kwargs))
    traced = traced_generator.generate(PROMPTS, max_new_tokens=7, return_logprobs=True)
    eager = Generator(model, samplers.get(name, **kwargs), jit_compile=False).generate(
        PROMPTS, max_new_tokens=7, return_logprobs=True)
    assert traced.token_ids == eager.token_ids
    for a, b in zip(traced.logprobs, eager.logprobs):
        np.testing.assert_allclose(a, b, atol=1e-5)
    _assert_steps_traced(traced_generator)


def _assert_steps_traced(generator):
    """The steps ran as graphs, not through the eager fallback."""
    graphs = generator.decoder.step.graphs
    assert graphs and all(entry is not None for entry in graphs.values())


@torch_only
@pytest.mark.parametrize("weights", ["int8", "bfloat16"])
def test_a_weights_snapshot_gives_the_untraced_tokens(weights):
    keras.utils.set_random_seed(4)
    model = CausalLM.from_preset("llama_nano", vocab_size=97)
    traced_generator = Generator(model, weights=weights)
    traced = traced_generator.generate(PROMPTS, max_new_tokens=6)
    eager = Generator(model, weights=weights, jit_compile=False).generate(
        PROMPTS, max_new_tokens=6)
    assert traced.token_ids == eager.token_ids
    _assert_steps_traced(traced_generator)


@torch_only
def test_streaming_gives_the_generated_tokens():
    keras.utils.set_random_seed(5)
    model = CausalLM.from_preset("gpt_nano", vocab_size=97)
    generator = Generator(model)
    streamed = [piece for piece in generator.stream([5, 6, 7], max_new_tokens=6)]
    assert streamed and all(isinstance(t, int) for t in streamed)
    assert streamed == Generator(model, jit_compile=False).generate(
        [[5, 6, 7]], max_new_tokens=6).token_ids[0]
    _assert_steps_traced(generator)


@torch_only
def test_one_trace_per_bucket_and_new_weights_are_read():
    """Two calls in one bucket reuse the step's graph; after the weights change, the replayed
    graph reads the new values (a graph with the weights baked in would keep the old tokens)."""
    keras.utils.set_random_seed(6)
    model = CausalLM.from_preset("gpt_nano", vocab_size=97)
    generator = Generator(model)
    first = generator.generate(PROMPTS, max_new_tokens=6).token_ids
    generator.generate([[1, 2], [9, 8, 7]], max_new_tokens=6)
    assert generator.decoder.step.traces == 1
    for v in model.trainable_variables:
        v.assign(v + keras.random.normal(v.shape, stddev=0.5, seed=7))
    second = generator.generate(PROMPTS, max_new_tokens=6).token_ids
    assert generator.decoder.step.traces == 1
    expected = Generator(model, jit_compile=False).generate(PROMPTS, max_new_tokens=6).token_ids
    assert second == expected
    assert second != first  # the check above is not vacuous


@torch_only
@pytest.mark.parametrize("read", ["numpy", "tolist"])
def test_a_step_that_reads_a_value_in_python_runs_eagerly(read):
    """A tensor's value read in Python inside a step: `convert_to_numpy` cannot be recorded,
    `tolist()` is recorded as a read whose result sizes a tensor (its layout is then not fixed).
    Either way the step runs eagerly, so every call sees its own value."""
    def count(t):
        n = int(ops.convert_to_numpy(t)[0]) if read == "numpy" else t.tolist()[0]
        return ops.sum(ops.ones((n,)))

    step = backend.compile_step(count)
    program = _program(lambda t: step(t))
    outs = [float(ops.convert_to_numpy(program(ops.convert_to_tensor([i])))) for i in range(3)]
    assert outs == [0.0, 1.0, 2.0]
    assert step.traces == 1 and list(step.graphs.values()) == [None]


@torch_only
def test_a_step_that_closes_over_a_tensor_runs_eagerly():
    """A tensor the step closes over (not an argument, not one of `variables`) would be a
    constant of the graph: the step runs eagerly, so a change to it is seen."""
    weight = ops.ones((2,))
    step = backend.compile_step(lambda x: x * weight)
    program = _program(lambda x: step(x))
    assert ops.convert_to_numpy(program(ops.ones((2,)))).tolist() == [1.0, 1.0]
    weight.copy_(ops.full((2,), 3.0))  # in place, as a Keras variable's assign is on PyTorch
    assert ops.convert_to_numpy(program(ops.ones((2,)))).tolist() == [3.0, 3.0]
    assert list(step.graphs.values()) == [None]


@torch_only
def test_a_read_after_an_in_place_write_is_not_merged_with_the_read_before():
    def write_between_reads(cache, index):
        before = ops.sum(cache)  # reads the cache
        cache = backend.update_slice(cache, [0, index], ops.ones((2, 1)))
        after = ops.sum(cache)  # the same op on the written cache
        return before, after, cache

    step = backend.compile_step(write_between_reads)
    program = _program(lambda c, i: step(c, i))
    cache = ops.zeros((2, 4))
    for i, expected in enumerate([(0, 2), (2, 4), (4, 6)]):
        before, after, cache = program(cache, ops.convert_to_tensor(i, "int32"))
        assert (float(before), float(after)) == expected
    np.testing.assert_array_equal(ops.convert_to_numpy(cache), [[1, 1, 1, 0], [1, 1, 1, 0]])
    assert step.traces == 1  # the slot is a tensor: one graph for every slot


@torch_only
def test_each_call_returns_tensors_of_its_own():
    """A tensor the step makes from constants alone is made again at each call: a caller that
    writes into what one call returned does not change what the next call returns."""
    def fresh(x):
        return ops.zeros((2,)), ops.reshape(ops.arange(4, dtype="float32"), (2, 2)), x + 1

    step = backend.compile_step(fresh)
    program = _program(lambda x: step(x))
    zeros, grid, _ = program(ops.zeros(()))
    zeros.add_(5.0)  # in place, as the decode loops write their caches
    grid.add_(5.0)
    zeros, grid, _ = program(ops.zeros(()))
    assert ops.convert_to_numpy(zeros).tolist() == [0.0, 0.0]
    assert ops.convert_to_numpy(grid).tolist() == [[0.0, 1.0], [2.0, 3.0]]
    assert step.traces == 1 and list(step.graphs.values())[0] is not None


@torch_only
def test_views_are_replayed_for_the_layout_they_were_traced_with():
    """A transposed (non-contiguous) input gets its own graph; chains of views in the graph are
    exact for each layout."""
    def heads(x):  # reshapes and transposes, as attention's head split
        b = ops.shape(x)[0]
        y = ops.transpose(ops.reshape(x, (b, 2, 3, 2)), (0, 2, 1, 3))
        return ops.reshape(y, (b, 12)) * 1.0

    step = backend.compile_step(heads)
    program = _program(lambda x: step(x))
    base = np.arange(24, dtype="float32").reshape(2, 12)
    transposed = ops.transpose(ops.convert_to_tensor(np.ascontiguousarray(base.T)))
    for x in (ops.convert_to_tensor(base), transposed):
        np.testing.assert_array_equal(ops.convert_to_numpy(program(x)),
                                      base.reshape(2, 2, 3, 2).transpose(0, 2, 1, 3).reshape(2, 12))
    assert step.traces == 2


@torch_only
def test_update_slice_at_a_tensor_index_with_an_offset_in_another_axis():
    def write(x, i):
        return backend.update_slice(x, [1, i], ops.full((1, 2), 5.0))

    program = _program(write)
    out = ops.convert_to_numpy(program(ops.zeros((3, 5)), ops.convert_to_tensor(2, "int32")))
    expected = np.zeros((3, 5))
    expected[1, 2:4] = 5
    np.testing.assert_array_equal(out, expected)
