"""PyTorch: a step of an eager loop recorded once as a graph of ATen ops and replayed.

`kzoo.backend.compile_step` on PyTorch. The decode loops run as Python loops there (a
data-dependent while loop), so each token paid the Python of Keras' layers and ops: at the
gpt_baby shape that Python, not the kernels, was most of a step. `TracedStep` records the step
with `make_fx` on fake tensors, simplifies the graph (constants folded, repeated ops merged,
chains of views made one `as_strided`) and replays it.
"""

import keras
import torch
from torch.fx.experimental.proxy_tensor import make_fx


class TracedStep:
    """`fn` recorded once per input signature as a graph of ATen ops (`make_fx`) and replayed.

    A decode step written with Keras layers and `keras.ops` spends most of its eager time in
    their Python; the graph runs the same kernels without it. The variables `variables()`
    returns are inputs of the graph (read through a `keras.StatelessScope`, as on JAX), so a
    replay reads their current values. A step that reads a tensor's value in Python (`int`,
    `bool`, `.item()`) would have it frozen into the graph: such a step is run eagerly instead.
    """

    def __init__(self, fn, variables):
        self.fn = fn
        self.variables = variables
        self.held = None
        self.graphs = {}  # signature -> (graph, output spec), or None: run eagerly
        self.traces = 0

    def __call__(self, *args):
        leaves = []
        try:
            key = _structure(args, leaves)
            entry = self.graphs.get(key, _UNSEEN)
        except TypeError:  # an argument that is neither a tensor nor a hashable constant
            return self.fn(*args)
        if self.held is None:  # the model is built by the first call
            self.held = list(self.variables())
        values = [v.value for v in self.held]
        if entry is _UNSEEN:
            entry = self.graphs[key] = self._trace(key, values, leaves)
        if entry is None:
            return self.fn(*args)
        graph, out_key = entry
        return _rebuild(out_key, iter(graph(*values, *leaves)))

    def _trace(self, key, values, leaves):
        count, out_keys = len(values), []

        def flat(*inputs):
            args = _rebuild(key, iter(inputs[count:]))
            with keras.StatelessScope(state_mapping=list(zip(self.held, inputs[:count]))):
                out = self.fn(*args)
            out_leaves = []
            out_keys.append(_structure(out, out_leaves))
            return out_leaves

        # Recorded on fake tensors: nothing runs, nothing is written. A step that needs a
        # tensor's value in Python (`int`, `.item()`, `.numpy()`) cannot be recorded and runs
        # eagerly; so does one that fails here (it fails the same way eagerly, with its error).
        self.traces += 1
        try:
            graph = make_fx(flat, tracing_mode="fake", _allow_non_fake_inputs=False)(
                *values, *leaves)
        except Exception:  # noqa: BLE001 - any failure to record means: run eagerly
            return None
        if _reads_an_input(graph):
            return None
        _simplify(graph, [*values, *leaves])
        return graph, out_keys[0]


_READS_VALUE = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default)


def _reads_an_input(graph):
    """Whether the graph reads into Python a value computed from its inputs (frozen at the
    recording). Values of constants (split sizes Keras computes as tensors) are the same at
    every replay."""
    from_inputs = set()
    for node in graph.graph.nodes:
        if node.op == "placeholder" or any(i in from_inputs for i in node.all_input_nodes):
            if node.target in _READS_VALUE:
                return True
            from_inputs.add(node)
    return False


def _structure(x, leaves):
    """A hashable description of nested tuples/lists/dicts `x`: each tensor by its layout
    (shape, strides, storage offset), dtype and device (appended to `leaves`), each other value
    by itself. The layout is part of it because the graph's views are fixed strides."""
    if isinstance(x, torch.Tensor):
        leaves.append(x)
        return _TENSOR, tuple(x.shape), x.stride(), x.storage_offset(), x.dtype, x.device
    if isinstance(x, (tuple, list)):
        return type(x), tuple(_structure(v, leaves) for v in x)
    if isinstance(x, dict):
        return dict, tuple((k, _structure(v, leaves)) for k, v in x.items())
    if x is None or isinstance(x, (bool, int, float, str)):
        return type(x), x
    raise TypeError(type(x).__name__)


def _rebuild(key, leaves):
    kind, content = key[0], key[1]
    if kind is _TENSOR:
        return next(leaves)
    if kind in (tuple, list):
        return kind(_rebuild(k, leaves) for k in content)
    if kind is dict:
        return {name: _rebuild(k, leaves) for name, k in content}
    return content


_TENSOR = object()
_UNSEEN = object()


def _simplify(graph, inputs):
    """Drop what the recording repeats: copies of constants and ops computed twice (the masks
    and position arithmetic every layer recomputes), then chains of views. Left as recorded:
    what is downstream of a value an op writes in place (a read after a write is never replaced
    by one before it), and what the step returns (each call returns tensors of its own, which
    the caller may write into)."""
    written = _written(graph)
    tainted, merged = written | _returned(graph), {}
    for node in list(graph.graph.nodes):
        if node.op != "call_function":
            continue
        if node in tainted or any(i in tainted for i in node.all_input_nodes):
            tainted.add(node)
            continue
        target = node.target
        if target is torch.ops.aten.lift_fresh_copy.default:
            node.replace_all_uses_with(node.args[0])
            graph.graph.erase_node(node)
            continue
        if not isinstance(target, torch._ops.OpOverload) or target._schema.is_mutable or (
                torch.Tag.nondeterministic_seeded in target.tags):
            continue
        key = (target, _hashable(node.args), _hashable(node.kwargs))
        if key in merged:
            node.replace_all_uses_with(merged[key])
            graph.graph.erase_node(node)
        else:
            merged[key] = node
    graph.graph.eliminate_dead_code()
    graph.recompile()
    layouts, values = _run(graph, inputs, written)
    _fold_constants(graph, values, tainted)
    _collapse_views(graph, layouts)
    graph.graph.eliminate_dead_code()
    graph.recompile()


def _returned(graph):
    """The nodes the graph returns, with the bases of views it returns."""
    returned = set()
    for node in graph.graph.nodes:
        if node.op == "output":
            for out in _nodes(node.args):
                while True:
                    returned.add(out)
                    if not _is_view(out):
                        break
                    out = out.args[0]
    return returned


def _nodes(args):
    found = []
    torch.fx.node.map_arg(args, lambda n: found.append(n) or n)
    return found


def _written(graph):
    """The nodes some op writes into in place, with the bases of views written into."""
    written = set()
    for node in graph.graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        if node.target._schema.is_mutable:
            target = node.args[0]
            written.add(target)
            while _is_view(target):  # a write into a view writes its base
                target = target.args[0]
                written.add(target)
    return written


def _run(graph, inputs, written):
    """Run the graph for real once: each node's output layout (the kernels' own strides, which
    fake tensors do not always predict) and the values of nodes computed from constants alone.
    Inputs the graph writes into are copied first, so the run changes nothing of the caller's."""
    placeholders = [n for n in graph.graph.nodes if n.op == "placeholder"]
    inputs = [torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device).copy_(x)
              if node in written else x for node, x in zip(placeholders, inputs)]
    layouts, values, constant = {}, {}, set()

    class Recorder(torch.fx.Interpreter):
        def run_node(self, node):
            out = super().run_node(node)
            if isinstance(out, torch.Tensor):
                layouts[node] = (list(out.shape), list(out.stride()), out.storage_offset())
            if node.op == "get_attr" or (
                    node.op == "call_function" and all(i in constant for i in node.all_input_nodes)
                    and not (isinstance(node.target, torch._ops.OpOverload) and (
                        torch.Tag.nondeterministic_seeded in node.target.tags))):
                constant.add(node)
                values[node] = out
            return out

    Recorder(graph).run(*inputs)
    return layouts, values


def _fold_constants(graph, values, tainted):
    """Nodes computed from constants alone (split sizes, aranges of fixed length, the shapes'
    arithmetic) become constants: their users read the value the real run computed."""
    for node, value in values.items():
        if node.op != "call_function" or node in tainted or all(u in values for u in node.users):
            continue
        if isinstance(value, torch.Tensor):
            name = f"_kzoo_constant_{len(values)}_{node.name}"
            graph.register_buffer(name, value)
            with graph.graph.inserting_before(node):
                replacement = graph.graph.get_attr(name)
            replacement.meta = dict(node.meta)
            node.replace_all_uses_with(replacement)
        elif isinstance(value, (bool, int, float)):
            def literal(a, node=node, value=value):
                return value if a is node else a

            for user in list(node.users):
                user.args = torch.fx.node.map_arg(user.args, literal)
                user.kwargs = torch.fx.node.map_arg(user.kwargs, literal)


def _collapse_views(graph, layouts):
    """Replace each chain of view ops (reshapes, permutes, unsqueezes of einsum and head
    splitting) by one `as_strided` with the chain's recorded layout: a third of a decode step's
    ops were such views, each a Python call at replay. Exact because the inputs' layouts are
    part of the graph's signature."""
    for node in reversed(list(graph.graph.nodes)):
        if not _is_view(node) or node.target is torch.ops.aten.as_strided.default:
            continue
        base, length = node.args[0], 1
        while _is_view(base) and len(base.users) == 1:
            base, length = base.args[0], length + 1
        if length < 2:
            continue
        with graph.graph.inserting_before(node):
            strided = graph.graph.call_function(torch.ops.aten.as_strided.default,
                                                (base, *layouts[node]))
        strided.meta = dict(node.meta)
        node.replace_all_uses_with(strided)


def _is_view(node):
    return (node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)
            and node.target.is_view and isinstance(node.meta.get("val"), torch.Tensor))


def _hashable(value):
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, (torch.dtype, torch.device, torch.layout, torch.memory_format)):
        return str(value)
    return value
