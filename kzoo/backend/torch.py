"""PyTorch: eager programs without autograd, gradients with autograd (as Keras' torch trainer)."""

import contextlib
import functools

import torch


def compile_function(fn, variables, jit_compile, on_trace):
    # The decode loops are Python loops over torch kernels: the fastest practical path on a
    # CPU is eager without autograd (torch.compile re-traces a data-dependent while loop).
    first = [on_trace]

    @functools.wraps(fn)
    def call(*args):
        if first:
            first.pop()()
        with torch.no_grad():
            return fn(*args)

    return call


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
