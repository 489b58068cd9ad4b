"""Exact rewrites of an exported ONNX graph that onnxruntime's own optimiser does not make.

paddle2onnx writes the condensed CondenseNets as traced: every learned group convolution (LGC) is
``Conv → Gather(channel shuffle) → BatchNormalization → activation → Conv``. onnxruntime folds a
BatchNormalization into the convolution before it, and fuses an activation into it, only when the two
are adjacent, so the shuffle between them costs a BatchNormalization and an activation pass per layer.
:func:`optimize_onnx` rewrites, with the same arithmetic (up to float rounding):

* ``Identity`` nodes are dropped (paddle2onnx writes hundreds);
* ``Conv → Gather(axis 1, a constant permutation) → BatchNormalization`` becomes ``Conv' → Gather``:
  the normalisation's scale and shift, taken back through the permutation, are folded into the
  convolution's weights and bias (the Gather must be a permutation, the convolution its only input);
* an elementwise activation after such a Gather (``Relu``, ``HardSigmoid``, ``Sigmoid``, ``Clip``, and
  hard-swish written as ``Mul(x, HardSigmoid(x))``) moves before it, onto the convolution's output, where
  onnxruntime fuses it into the convolution (``FusedConv``) when it can;
* ``Add(F, Conv1x1(a))`` with few input channels (the folded SFR: growth channels onto all features) becomes
  a ``MatMul`` that writes the NCHW sum directly, instead of a blocked-layout convolution and a copy back;
* grouped convolutions with few channels per group (the 3x3 after each LGC) become merged groups or a
  depthwise convolution plus a 0/1 sum, forms onnxruntime runs with its blocked kernels instead of one
  im2col and one tiny GEMM per group.

Measured on CondenseNetV2-C (1 thread, CPU time, AMD EPYC): the first three 1.08× at batch 1, the grouped
convolutions another 1.19×; with ``OnnxPredictor``'s micro-batches the whole path is ~1.7× the plain export
at batch 16 (``benchmarks/benchmark.py``: ``ours-onnx`` vs ``ours-onnx-plain``). The rewrites change float
rounding only (the export tests compare with the dygraph model to 1e-4). Anything that does not match
exactly is left as it is; :func:`optimize_onnx` returns the counts.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Tuple

import numpy as np

UNARY = ("Relu", "HardSigmoid", "Sigmoid", "Clip", "LeakyRelu", "Tanh")


class _Graph:
    """Producer/consumer maps over an ``onnx.GraphProto``, rebuilt after each rewrite."""

    def __init__(self, graph):
        from onnx import numpy_helper

        self.graph = graph
        self.inits = {t.name: t for t in graph.initializer}
        self._np = numpy_helper
        self.outputs = {o.name for o in graph.output}
        self.shapes = {}  # inferred dims (int, or None where symbolic/unknown) of the original tensors
        self.rebuild()

    def infer_shapes(self, model):
        from onnx import shape_inference

        try:
            inferred = shape_inference.infer_shapes(model).graph
        except Exception:  # noqa: BLE001 - no shapes: the rewrites that need them are skipped
            return
        for vi in list(inferred.value_info) + list(inferred.input) + list(inferred.output):
            t = vi.type.tensor_type
            if t.HasField("shape"):
                self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]

    def rebuild(self):
        self.producer, self.consumers = {}, defaultdict(list)
        for node in self.graph.node:
            for o in node.output:
                self.producer[o] = node
            for i in node.input:
                if i:
                    self.consumers[i].append(node)

    def array(self, name):
        t = self.inits.get(name)
        return None if t is None else self._np.to_array(t)

    def only_consumer(self, name, node) -> bool:
        return name not in self.outputs and [id(n) for n in self.consumers[name]] == [id(node)]

    def add_init(self, array, hint: str) -> str:
        name, k = hint, 0
        while name in self.inits or name in self.producer:
            k += 1
            name = f"{hint}_{k}"
        t = self._np.from_array(np.ascontiguousarray(array), name)
        self.graph.initializer.append(t)
        self.inits[name] = t
        return name


def _attr(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _drop_identities(g: _Graph) -> int:
    rename, keep, dropped = {}, [], 0
    for node in g.graph.node:
        if node.op_type != "Identity":
            keep.append(node)
        elif node.output[0] not in g.outputs:
            rename[node.output[0]] = node.input[0]
        else:  # it names a graph output: its producer can write that name itself if nothing else reads its input
            src = g.producer.get(node.input[0])
            if src is None or node.input[0] in g.outputs or len(g.consumers[node.input[0]]) != 1:
                keep.append(node)
                continue
            src.output[list(src.output).index(node.input[0])] = node.output[0]
            dropped += 1
    if dropped and not rename:
        del g.graph.node[:]
        g.graph.node.extend(keep)
        g.rebuild()
        return dropped
    if not rename:
        return 0

    def resolve(name):
        while name in rename:
            name = rename[name]
        return name

    for node in keep:
        for k, name in enumerate(node.input):
            if name in rename:
                node.input[k] = resolve(name)
    del g.graph.node[:]
    g.graph.node.extend(keep)
    g.rebuild()
    return len(rename) + dropped


def _channel_permutation(g: _Graph, gather):
    """The constant index of a channel ``Gather`` if it is a permutation of its input's channels, else None."""
    if gather.op_type != "Gather" or _attr(gather, "axis", 0) != 1:
        return None
    idx = g.array(gather.input[1])
    if idx is None or idx.ndim != 1:
        return None
    idx = idx.astype(np.int64)
    if not np.array_equal(np.sort(idx), np.arange(len(idx))):
        return None
    return idx


def _fold_bn_through_permutation(g: _Graph) -> int:
    folded = 0
    for bn in list(g.graph.node):
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1 or _attr(bn, "training_mode", 0):
            continue
        gather = g.producer.get(bn.input[0])
        if gather is None or not g.only_consumer(bn.input[0], bn):
            continue
        idx = _channel_permutation(g, gather)
        conv = g.producer.get(gather.input[0])
        if idx is None or conv is None or conv.op_type != "Conv" or not g.only_consumer(gather.input[0], gather):
            continue
        w = g.array(conv.input[1])
        b = g.array(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        params = [g.array(n) for n in bn.input[1:5]]
        if w is None or (len(conv.input) > 2 and conv.input[2] and b is None) or any(p is None for p in params):
            continue
        if w.shape[0] != len(idx) or any(p.shape != (len(idx),) for p in params):
            continue
        scale, shift, mean, var = (p.astype(np.float64) for p in params)
        a = scale / np.sqrt(var + float(_attr(bn, "epsilon", 1e-5)))
        c = shift - a * mean
        # BN output j reads conv channel idx[j]: conv channel idx[j] takes BN's factor a[j]
        a_conv, c_conv = np.empty_like(a), np.empty_like(c)
        a_conv[idx], c_conv[idx] = a, c
        bias = np.zeros(len(idx)) if b is None else b.astype(np.float64)
        w_new = (w.astype(np.float64) * a_conv.reshape(-1, *([1] * (w.ndim - 1)))).astype(w.dtype)
        b_new = (bias * a_conv + c_conv).astype(w.dtype)
        conv.input[1] = g.add_init(w_new, conv.input[1] + "_bnfold")
        if len(conv.input) > 2:
            conv.input[2] = g.add_init(b_new, conv.input[1] + "_bias")
        else:
            conv.input.append(g.add_init(b_new, conv.input[1] + "_bias"))
        gather.output[0] = bn.output[0]
        g.graph.node.remove(bn)
        g.rebuild()
        folded += 1
    return folded


def _hoist_activations(g: _Graph) -> int:
    """``Gather(perm) → act`` becomes ``act → Gather(perm)`` where the Gather's input is a Conv output used only
    by it (so the activation then follows the Conv directly)."""
    moved = 0
    for gather in list(g.graph.node):
        if gather.op_type != "Gather" or _channel_permutation(g, gather) is None:
            continue
        src, out = gather.input[0], gather.output[0]
        conv = g.producer.get(src)
        if conv is None or conv.op_type != "Conv" or not g.only_consumer(src, gather) or out in g.outputs:
            continue
        users = g.consumers[out]
        if len(users) == 1 and users[0].op_type in UNARY:
            act = users[0]
            final = act.output[0]
            act.input[0], act.output[0] = src, out + "_act"
            gather.input[0], gather.output[0] = act.output[0], final
        elif len(users) == 2 and {u.op_type for u in users} == {"HardSigmoid", "Mul"}:
            hs = next(u for u in users if u.op_type == "HardSigmoid")
            mul = next(u for u in users if u.op_type == "Mul")
            if sorted(mul.input) != sorted([out, hs.output[0]]) or not g.only_consumer(hs.output[0], mul):
                continue
            final = mul.output[0]
            hs.input[0] = src
            mul.input[list(mul.input).index(out)] = src
            mul.output[0] = out + "_act"
            gather.input[0], gather.output[0] = mul.output[0], final
        else:
            continue
        g.rebuild()  # (the node order is restored once, at the end: sorting copies the nodes)
        moved += 1
    return moved


def _small_conv_add_to_matmul(g: _Graph, max_in_channels: int) -> int:
    """``Add(F, Conv1x1(a))`` with a dense 1x1 convolution of few input channels (CondenseNetV2's folded SFR: the
    growth channels onto all features) becomes ``Add(F, Reshape(MatMul(W, Reshape(a)), Shape(F)))``.

    onnxruntime runs such a convolution in its blocked NCHWc layout and converts the wide output back to NCHW
    for the Add, a copy of the whole feature map; a plain GEMM writes it in place. With few input channels
    the GEMM is as fast as the blocked kernel, so the copy is saved."""
    done = 0
    for add in list(g.graph.node):
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        for k in (0, 1):
            conv = g.producer.get(add.input[k])
            other = add.input[1 - k]
            if conv is None or conv.op_type != "Conv" or not g.only_consumer(add.input[k], add):
                continue
            w = g.array(conv.input[1])
            dims = g.shapes.get(other)  # the Add must not broadcast: ``other`` has the conv output's shape
            if (dims is None or len(dims) != 4 or dims[1] != (None if w is None else w.shape[0])
                    or any(d == 1 for d in dims[2:]) or other in g.inits):
                continue
            if (w is None or w.ndim != 4 or w.shape[2:] != (1, 1) or w.shape[1] > max_in_channels
                    or (len(conv.input) > 2 and conv.input[2]) or _attr(conv, "group", 1) != 1
                    or any(v != 1 for v in _attr(conv, "strides", [1, 1]) + _attr(conv, "dilations", [1, 1]))
                    or any(_attr(conv, "pads", [0, 0, 0, 0])) or _attr(conv, "auto_pad", b"NOTSET") not in
                    (b"NOTSET", "NOTSET", b"VALID", "VALID")):
                continue
            from onnx import helper

            out = add.input[k]
            w2 = g.add_init(w[:, :, 0, 0], conv.input[1] + "_2d")
            flat = g.add_init(np.array([0, w.shape[1], -1], np.int64), "ppcdnv2_flat_shape")
            a2, m, shape = out + "_flat_in", out + "_matmul", out + "_shape"
            nodes = [helper.make_node("Reshape", [conv.input[0], flat], [a2], name=conv.name + "_flat"),
                     helper.make_node("MatMul", [w2, a2], [m], name=conv.name + "_matmul"),
                     helper.make_node("Shape", [other], [shape], name=conv.name + "_shape"),
                     helper.make_node("Reshape", [m, shape], [out], name=conv.name + "_unflat")]
            g.graph.node.remove(conv)
            g.graph.node.extend(nodes)
            g.rebuild()
            done += 1
            break
    return done


def _regroup_small_group_convs(g: _Graph, block: int = 16, max_merge: int = 4, max_expand: int = 2,
                               sum_as_conv: bool = True) -> Tuple[int, int]:
    """Grouped convolutions with few channels per group, which onnxruntime runs as one im2col and one tiny GEMM
    per group (CondenseNetV2's grouped 3x3: 4 → 1 to 32 → 8 channels per group), rewritten exactly for its
    blocked NCHWc kernels (``block`` = 16 channels, AVX-512):

    * merged groups: ``f`` neighbouring groups become one (block-diagonal weights, zeros elsewhere) when that
      makes both channel counts per group multiples of ``block`` with ``f <= max_merge`` (``f``× the MACs);
    * otherwise, as a depthwise convolution and a sum: every (input channel, output channel) pair of a group
      is one depthwise channel, the input channels gathered into that order (composed with the channel
      shuffle Gather before it when there is one, so no extra pass), then ``ReduceSum`` over the group's
      inputs; only when the depthwise width is a multiple of ``block`` and at most ``max_expand``× the input.

    Returns (merged, made depthwise)."""
    from onnx import helper

    merged = depthwise = 0
    for conv in list(g.graph.node):
        if conv.op_type != "Conv" or len(conv.input) > 2 and conv.input[2]:
            continue
        groups = _attr(conv, "group", 1)
        w = g.array(conv.input[1])
        if groups <= 1 or w is None or w.ndim != 4:
            continue
        cout, in_g = w.shape[:2]
        out_g = cout // groups
        if (out_g % block == 0 and in_g % block == 0) or in_g == 1:
            continue  # already blocked, or depthwise already
        f = next((f for f in range(2, groups + 1) if groups % f == 0 and (out_g * f) % block == 0
                  and (in_g * f) % block == 0), None)
        attrs = [a for a in conv.attribute if a.name != "group"]
        if f is not None and f <= max_merge:
            wm = np.zeros((cout, in_g * f) + w.shape[2:], w.dtype)
            for o in range(cout):
                j = o // out_g
                wm[o, (j % f) * in_g:(j % f + 1) * in_g] = w[o]
            conv.input[1] = g.add_init(wm, conv.input[1] + f"_merged{f}")
            del conv.attribute[:]
            conv.attribute.extend(attrs + [helper.make_attribute("group", groups // f)])
            merged += 1
            continue
        width = in_g * cout
        if width % block or width > max_expand * in_g * groups:
            continue
        # depthwise channel (i, o) reads input channel (o // out_g) * in_g + i with weight w[o, i]
        src = np.array([(o // out_g) * in_g + i for i in range(in_g) for o in range(cout)], np.int64)
        wd = np.ascontiguousarray(w.transpose(1, 0, 2, 3).reshape(width, 1, *w.shape[2:]))
        x = conv.input[0]
        gather = g.producer.get(x)
        if (gather is not None and gather.op_type == "Gather" and _attr(gather, "axis", 0) == 1
                and g.array(gather.input[1]) is not None and g.array(gather.input[1]).ndim == 1
                and g.only_consumer(x, conv)):
            gather.input[1] = g.add_init(g.array(gather.input[1]).astype(np.int64)[src], gather.input[1] + "_dw")
            dw_in, extra = x, []
        else:
            dw_in = conv.output[0] + "_dw_in"
            extra = [helper.make_node("Gather", [x, g.add_init(src, conv.input[1] + "_dw_src")], [dw_in], axis=1,
                                      name=conv.name + "_dw_gather")]
        out = conv.output[0]
        d = out + "_dw"
        dw = helper.make_node("Conv", [dw_in, g.add_init(wd, conv.input[1] + "_dw")], [d], name=conv.name + "_dw")
        dw.attribute.extend(attrs + [helper.make_attribute("group", width)])
        if sum_as_conv:  # the sum as a 0/1 1x1 convolution: stays in the blocked layout after the depthwise one
            ones = np.zeros((cout, width, 1, 1), w.dtype)
            ones[np.tile(np.arange(cout), in_g), np.arange(width)] = 1
            nodes = extra + [dw, helper.make_node("Conv", [d, g.add_init(ones, conv.input[1] + "_dw_sum")], [out],
                                                  name=conv.name + "_dw_sum")]
        else:
            r, s = out + "_dw_split", out + "_dw_sum"
            split = g.add_init(np.array([0, in_g, -1, 0], np.int64), "ppcdnv2_dw_split")
            unsplit = g.add_init(np.array([0, cout, -1, 0], np.int64), "ppcdnv2_dw_unsplit")
            axes = g.add_init(np.array([1], np.int64), "ppcdnv2_axis1")
            nodes = extra + [dw,
                             helper.make_node("Reshape", [d, split], [r], name=conv.name + "_dw_split"),
                             helper.make_node("ReduceSum", [r, axes], [s], keepdims=1, name=conv.name + "_dw_sum"),
                             helper.make_node("Reshape", [s, unsplit], [out], name=conv.name + "_dw_unsplit")]
        g.graph.node.remove(conv)
        g.graph.node.extend(nodes)
        g.rebuild()
        depthwise += 1
    return merged, depthwise


def _toposort(graph) -> None:
    produced = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, order = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in produced for i in node.input):
                order.append(node)
                produced.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError("ONNX graph has a cycle or an undefined input after rewriting")
        pending = rest
    del graph.node[:]
    graph.node.extend(order)


def _drop_unused_initializers(g: _Graph) -> None:
    used = {i for node in g.graph.node for i in node.input} | g.outputs
    keep = [t for t in g.graph.initializer if t.name in used]
    del g.graph.initializer[:]
    g.graph.initializer.extend(keep)


def optimize_onnx(model, matmul_max_in_channels: int = 64, regroup: bool = True,
                  sum_as_conv: bool = True) -> Tuple[object, Dict[str, int]]:
    """``(model, counts)``: ``model`` (an ``onnx.ModelProto``, changed in place) with the rewrites above."""
    g = _Graph(model.graph)
    g.infer_shapes(model)
    counts = {"identity_removed": _drop_identities(g),
              "bn_folded_through_shuffle": _fold_bn_through_permutation(g),
              "activation_moved_before_shuffle": _hoist_activations(g),
              "conv_add_as_matmul": _small_conv_add_to_matmul(g, matmul_max_in_channels)}
    if regroup:
        merged, depthwise = _regroup_small_group_convs(g, sum_as_conv=sum_as_conv)
        counts["group_conv_merged"], counts["group_conv_as_depthwise"] = merged, depthwise
    _drop_unused_initializers(g)
    del model.graph.value_info[:]  # names changed meaning; onnxruntime infers shapes itself
    _toposort(model.graph)
    return model, counts


def optimize_onnx_file(src, dst=None) -> Dict[str, int]:
    """Rewrite the ONNX file ``src`` (into ``dst``, default in place); returns the counts."""
    import onnx

    model = onnx.load(str(src))
    model, counts = optimize_onnx(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst or src))
    return counts


def graph_summary(model) -> List[Tuple[str, int]]:
    """(op type, count) of a model's nodes, most frequent first."""
    counts = defaultdict(int)
    for node in model.graph.node:
        counts[node.op_type] += 1
    return sorted(counts.items(), key=lambda kv: -kv[1])
