"""PyTorch: eager programs without autograd, gradients with autograd (as Keras' torch trainer)."""

import contextlib
import functools
import threading

import torch


def compile_function(fn, variables, jit_compile, on_trace):
    # The decode loops are Python loops over torch kernels: the fastest practical path on a
    # CPU is eager without autograd (torch.compile re-traces a data-dependent while loop).
    first = [on_trace]

    @functools.wraps(fn)
    def call(*args):
        if first:
            first.pop()()
        depth = getattr(_PROGRAM, "depth", 0)
        _PROGRAM.depth = depth + 1
        try:
            with torch.no_grad():
                return fn(*args)
        finally:
            _PROGRAM.depth = depth

    return call


# `depth` > 0 while a compile_function program runs in this thread: another thread's
# `update_slice` outside a program keeps Keras' copying semantics.
_PROGRAM = threading.local()


def update_slice(x, start_indices, updates):
    from keras import ops

    if not getattr(_PROGRAM, "depth", 0) or not isinstance(x, torch.Tensor):
        return ops.slice_update(x, start_indices, updates)
    updates = ops.convert_to_tensor(updates, x.dtype)
    moving = [d for d, i in enumerate(start_indices) if isinstance(i, torch.Tensor)]
    if len(moving) == 1:
        # One tensor index (a decode step's cache slot): written at that index by a tensor op,
        # so a traced step stays valid at every slot and no value is read back to Python.
        (axis,) = moving
        length = updates.shape[axis]
        index = start_indices[axis].to(torch.int64).reshape(1) + torch.arange(
            length, device=x.device)
        view = x[tuple(slice(None) if d == axis else slice(int(i), int(i) + n)
                       for d, (i, n) in enumerate(zip(start_indices, updates.shape)))]
        view.index_copy_(axis, index, updates)
        return x
    index = [int(i) for i in start_indices]  # a Python loop: the indices are concrete
    x[tuple(slice(i, i + n) for i, n in zip(index, updates.shape))] = updates
    return x


def compile_step(fn, variables):
    from kzoo.backend.torch_graph import TracedStep

    return TracedStep(fn, variables)


def matmul_transposed(x, kernel, int_accumulate=False):
    if int_accumulate:
        # No int8 GEMM on CPU in torch: the products of int8 values summed in float32 are exact
        # up to 2**24 (|x|, |w| <= 127: inner sizes up to 1,040), float rounding beyond.
        return torch.matmul(x.to(torch.float32), kernel.to(torch.float32).T)
    return torch.matmul(x, kernel.T)


def apply_gradients(optimizer, compute_loss, variables):
    for v in variables:
        v.value.grad = None
    loss, aux = compute_loss()
    loss.backward()
    grads = [v.value.grad for v in variables]
    with torch.no_grad():
        optimizer.apply(grads, variables)
    return loss.detach(), torch.utils._pytree.tree_map(
        lambda x: x.detach() if isinstance(x, torch.Tensor) else x, aux)


# Keras' torch trainer runs one process per device (no replicas inside a program) and eager ops
# run in order: the replica reductions are identities and nothing needs ordering.
def replica_sum(x):
    return x


def replica_mean(x):
    return x


def average_loss(per_example):
    return torch.mean(per_example)


def control_dependencies(tensors):
    return contextlib.nullcontext()


def train_jit_compile(jit_compile):
    # Keras' torch `jit_compile` is `torch.compile` over Keras' Python, which breaks its graph
    # and recompiles per layer until dynamo gives up: a 4-step tiny pre-training took 152 s
    # with it and 10 s eager on a busy 2-core CPU. kzoo compiles the step itself instead
    # (`compile_train_step`), so Keras is always told False.
    return False


def compile_train_step(model, jit_compile):
    from kzoo.backend import torch_train

    if jit_compile is True:
        jit_compile = torch_train.DEFAULT_COMPILER
    if jit_compile and jit_compile not in torch_train.COMPILERS:
        raise ValueError(f"jit_compile={jit_compile!r} is not a PyTorch train-step compiler; "
                         f"valid: True, False or one of {list(torch_train.COMPILERS)}")
    torch_train.install(model, jit_compile or None)


def is_concrete(tensor):
    # Fake tensors are what `make_fx` records a step on (`compile_step`, the compiled train
    # step): they hold no values, like a tensor that `torch.compile` traces.
    from torch._subclasses.fake_tensor import FakeTensor

    return (isinstance(tensor, torch.Tensor) and not isinstance(tensor, FakeTensor)
            and not torch.compiler.is_compiling())


def clip_global_batch(grads, clip):
    # One process per device, each with its own whole gradient: Keras' clipping as it is.
    return clip(grads)


DISTRIBUTIONS = ("none",)


def split_cpu(logical_cpus):
    if logical_cpus > 1:
        raise NotImplementedError(
            f"logical_cpus={logical_cpus}: the torch backend cannot split the CPU into "
            "devices; allowed: 0 or 1")


def distribution(strategy_name, logical_cpus):
    from kzoo.backend import KerasStrategy

    if logical_cpus > 1:
        raise ValueError(f"logical_cpus={logical_cpus} needs a distribution; on the torch "
                         "backend distribution must be 'none' (use 0)")
    return KerasStrategy()
