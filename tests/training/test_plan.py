"""The memory planner (`kzoo.training.plan`, `kzoo plan`) against built models and real arrays."""

import keras
import numpy as np
import pytest

from kzoo.cli.plan import main as plan_main
from kzoo.models import CausalLM, list_presets
from kzoo.training.plan import model_arguments, plan, shard_fraction, variables

# Every preset small enough to build in a test (the variable list is derived from arguments,
# so a preset or family whose weights drift from it fails here).
SMALL = [name for name in list_presets() if name.endswith(("_nano", "_baby"))]
OPTIONS = [
    dict(position_embedding="rope", norm="rmsnorm", activation="swiglu", use_bias=False,
         qkv_bias=True, tie_embeddings=False, num_kv_heads=1, head_dim=24),
    dict(use_bias=True, feedforward_bias=False, attention_output_bias=False),
]


def _model_variables(model):
    prefix = model.name + "/"
    return sorted((v.path.removeprefix(prefix), tuple(v.shape)) for v in model.weights)


def _planned(args):
    return sorted((v.path, v.shape) for v in variables(args))


@pytest.mark.parametrize("preset", SMALL)
def test_the_variable_list_is_the_built_models(preset):
    model = CausalLM.from_preset(preset, initializer_range=0.0)
    assert _planned(model_arguments(preset)) == _model_variables(model)
    assert plan(preset).parameters == model.count_params()


@pytest.mark.parametrize("options", OPTIONS, ids=["qwen2-like", "partial-biases"])
def test_the_variable_list_follows_the_options(options):
    args = dict(vocab_size=50, num_layers=2, num_heads=4, hidden_dim=32,
                max_sequence_length=16, **options)
    model = CausalLM(**args, initializer_range=0.0)
    assert _planned(model_arguments(args)) == _model_variables(model)


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_weights_optimizer_and_gradients_are_the_measured_bytes(precision):
    args = dict(model_arguments("llama_nano"), dtype=precision)
    model = CausalLM.from_preset("llama_nano", dtype=precision)
    optimizer = keras.optimizers.AdamW(1e-3)
    optimizer.build(model.trainable_variables)
    measured = sum(np.dtype(v.dtype).itemsize * int(np.prod(v.shape)) for v in model.weights)
    slots = [v for v in optimizer.variables if len(v.shape) > 0]  # not the step counters
    report = plan(args, precision=precision)
    assert report.per_device["weights"] == measured
    assert report.per_device["optimizer"] == sum(
        np.dtype(v.dtype).itemsize * int(np.prod(v.shape)) for v in slots)
    grads = sum(4 * int(np.prod(v.shape)) for v in model.trainable_variables)  # float32 grads
    assert report.per_device["gradients"] == grads


def test_fsdp_holds_an_eighth_and_tensor_parallel_splits_heads():
    single = plan("gpt2_124m", batch_size=8)
    fsdp = plan("gpt2_124m", mesh={"batch": 1, "model": 8}, layout="fsdp", batch_size=8)
    state = lambda p: p.per_device["weights"] + p.per_device["optimizer"]  # noqa: E731
    assert state(fsdp) <= state(single) / 8 * 1.05  # the bar
    assert state(fsdp) >= state(single) / 8
    tp = plan("llama_124m", mesh={"batch": 2, "model": 4}, layout="tensor_parallel",
              batch_size=8)
    dp = plan("llama_124m", mesh={"batch": 2, "model": 4}, layout="data_parallel", batch_size=8)
    assert tp.per_device["weights"] < dp.per_device["weights"] / 3
    # data parallel over 8 devices: 1 row each; tensor parallel over 2 replicas: 4 rows, but
    # the heads are split four ways, so only the unsplit tensors grow.
    assert dp.per_device["activations"] < tp.per_device["activations"]
    remat = plan("llama_124m", batch_size=8, remat=True)
    assert remat.per_device["activations"] < plan("llama_124m", batch_size=8).per_device[
        "activations"] / 3


def test_norms_and_biases_are_replicated_and_kernels_split():
    found = {v.path: v for v in variables(model_arguments("gpt_nano"))}
    assert shard_fraction(found["block_0/attention_norm/gamma"], "fsdp", 4) == 1.0
    assert shard_fraction(found["block_0/attention/query_key_value/kernel"], "fsdp", 4) == 0.25
    assert shard_fraction(found["block_0/attention/attention_output/bias"],
                          "tensor_parallel", 4) == 1.0
    assert shard_fraction(found["block_0/feedforward/up/bias"], "tensor_parallel", 4) == 0.25


def test_compute_figures():
    report = plan("gpt_nano", tokens=10**6, peak_tflops=1.0)
    assert report.flops == 6.0 * report.parameters * 10**6
    assert any("one operation a second" in note for note in report.notes)
    assert "parameters: 124,672" in report.summary()


@pytest.mark.parametrize("call, message", [
    (lambda: plan("gpt_nano", layout="zero3"), "layouts: data_parallel, fsdp, tensor_parallel"),
    (lambda: plan("gpt_nano", precision="fp8"), "precisions: float32, mixed_bfloat16"),
    (lambda: plan("gpt_nano", mesh={"batch": 2}), "mesh must be {batch: N, model: M}"),
    (lambda: plan("gpt_nano", mesh={"batch": 3, "model": 1}, batch_size=8),
     "batch_size=8 is not divisible by the 3 data replicas"),
    (lambda: plan("gpt2_124m", mesh={"batch": 1, "model": 5}, layout="tensor_parallel"),
     r"weight token_embedding/embeddings of shape \(50257, 768\) along axis 1"),
    (lambda: plan(dict(vocab_size=50, num_layers=1, num_heads=4, num_kv_heads=1, hidden_dim=48,
                       position_embedding="rope", norm="rmsnorm", activation="swiglu"),
                  mesh={"batch": 1, "model": 16}, layout="tensor_parallel", batch_size=1),
     r"weight block_0/attention/query_key_value/kernel of shape \(48, 72\) along axis 1"),
])
def test_bad_input_is_one_line(call, message):
    with pytest.raises(ValueError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


def test_the_command(capsys):
    assert plan_main(["gpt_nano", "--mesh", "1x2", "--layout", "fsdp", "--batch-size", "4",
                      "--device-memory", "1"]) == 0
    out = capsys.readouterr().out
    assert "fits a device of 1.0 GiB" in out and "weights" in out
    for argv, message in [(["gpt_nano", "--mesh", "2by2"], "--mesh must be BATCHxMODEL"),
                          (["gpt_nano", "--batch-size", "0"], "--batch-size must be >= 1"),
                          (["nosuch"], "Unknown preset: 'nosuch'"),
                          (["gpt_nano", "--layout", "zero3"], "invalid choice")]:
        assert plan_main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
