"""PyTorch: gradients with autograd, as Keras' own torch trainer does."""

import torch


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
