"""CTranslate2 Whisper checkpoints (what faster-whisper downloads) to two ONNX graphs.

No PyTorch: the weights are read from ``model.bin`` with numpy and the graphs are built node by
node with the ``onnx`` package.

- ``encoder.onnx``: log-mel ``[1, 80, 2N]`` -> ``hidden [1, N, d]`` and, for every decoder
  layer, the cross-attention keys and values ``[1, heads, N, d/heads]`` (computed once per
  window here instead of at every decoder step).
- ``decoder.onnx``: ``tokens [B, L]``, ``offset`` (positions already in the cache), and per layer
  the self-attention cache ``[B, heads, offset, d/heads]`` plus the cross-attention keys and
  values -> ``logits [B, L, vocab]`` and the grown self-attention cache. One graph serves the
  first call (a whole prompt, empty cache) and every later step.

``N`` may be below Whisper's 1500 positions (30 s): the positional encodings are sliced to it.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
# What a node attribute may be here (helper.make_node accepts these and more).
_Attribute = int | float | str | list[int]


def read_ct2(path: Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 ``model.bin`` (binary version 5-6) as float32 or ints;
    int8 weights are dequantised with their ``weight_scale``."""
    data = Path(path).read_bytes()
    offset = 0

    def take(fmt: str) -> int:  # every field read with it is an unsigned integer
        nonlocal offset
        value = struct.unpack_from(fmt, data, offset)[0]
        offset += struct.calcsize(fmt)
        return value

    def text() -> str:
        nonlocal offset
        length = take("<H")
        value = data[offset : offset + length - 1].decode("utf-8")  # NUL-terminated
        offset += length
        return value

    version = take("<I")
    if version < 5:
        raise ValueError(f"{path}: CTranslate2 binary version {version} is too old (5 or later needed)")
    spec = text()
    if spec != "WhisperSpec":
        raise ValueError(f"{path}: a {spec} checkpoint, not Whisper")
    take("<I")  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(take("<I")):
        name = text()
        shape = [take("<I") for _ in range(take("<B"))]
        kind = take("<B")
        size = take("<I")
        if kind not in _DTYPES:
            raise ValueError(f"{path}: {name} has a data type ({kind}) this converter does not read (bfloat16?)")
        dtype = np.dtype(_DTYPES[kind])
        variables[name] = np.frombuffer(data, dtype, size // dtype.itemsize, offset).reshape(shape)
        offset += size
    for _ in range(take("<I")):
        alias, target = text(), text()
        variables[alias] = variables[target]
    weights: dict[str, np.ndarray] = {}
    for name, value in variables.items():
        if name.endswith("_scale"):
            continue
        if value.dtype == np.int8 and f"{name}_scale" in variables:
            scale = variables[f"{name}_scale"].astype(np.float32)
            value = value.astype(np.float32) / (scale[:, None] if scale.ndim == 1 else scale)
        elif value.dtype == np.float16:
            value = value.astype(np.float32)
        weights[name] = value
    return weights


class _Graph:
    """A tiny builder: named initializers and nodes, with unique intermediate names."""

    def __init__(self, weights: dict[str, np.ndarray]):
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(value), name)
        return name

    def weight(self, name: str, transpose: bool = False) -> str:
        key = name + (".T" if transpose else "")
        return self.const(key, self.weights[name].T if transpose else self.weights[name])

    def op(self, kind: str, *inputs: str, name: str | None = None, **attrs: _Attribute) -> str:
        """A node with one output: its name (``name`` if given)."""
        (output,) = self.ops(kind, *inputs, outputs=1, name=name, **attrs)
        return output

    def ops(self, kind: str, *inputs: str, outputs: int, name: str | None = None, **attrs: _Attribute) -> list[str]:
        """A node with ``outputs`` outputs: their names (``name`` only names a single output)."""
        self.count += 1
        names = [name] if name and outputs == 1 else [f"{kind.lower()}_{self.count}_{i}" for i in range(outputs)]
        # make_node's own parameters spelled out: every entry of ``attrs`` is an attribute (the node stays unnamed).
        self.nodes.append(helper.make_node(kind, list(inputs), names, name=None, doc_string=None, domain=None, overload=None, **attrs))
        return names

    def ints(self, *values: int) -> str:
        return self.const("i64_" + "_".join(str(v).replace("-", "m") for v in values), np.array(values, dtype=np.int64))

    def index(self, value: int) -> str:
        return self.const(f"i64_scalar_{value}", np.array(value, dtype=np.int64))

    def scalar(self, value: float) -> str:
        return self.const(f"f32_{value!r}", np.array(value, dtype=np.float32))

    # -- layers ------------------------------------------------------------------------------
    def linear(self, x: str, prefix: str, bias: bool = True) -> str:
        y = self.op("MatMul", x, self.weight(f"{prefix}/weight", transpose=True))
        return self.op("Add", y, self.weight(f"{prefix}/bias")) if bias and f"{prefix}/bias" in self.weights else y

    def layer_norm(self, x: str, prefix: str) -> str:
        return self.op("LayerNormalization", x, self.weight(f"{prefix}/gamma"), self.weight(f"{prefix}/beta"), axis=-1, epsilon=1e-5)

    def gelu(self, x: str) -> str:
        # Exact GELU, 0.5 x (1 + erf(x / sqrt 2)); ONNX Runtime fuses the pattern.
        inner = self.op("Erf", self.op("Div", x, self.scalar(float(np.sqrt(2.0)))))
        return self.op("Mul", self.op("Mul", x, self.scalar(0.5)), self.op("Add", inner, self.scalar(1.0)))

    def heads(self, x: str, count: int) -> str:
        """[B, T, d] -> [B, heads, T, d/heads]."""
        return self.op("Transpose", self.op("Reshape", x, self.ints(0, 0, count, -1)), perm=[0, 2, 1, 3])

    def merge(self, x: str) -> str:
        """[B, heads, T, d/heads] -> [B, T, d]."""
        return self.op("Reshape", self.op("Transpose", x, perm=[0, 2, 1, 3]), self.ints(0, 0, -1))

    def attend(self, q: str, k: str, v: str, head_dim: int, mask: str | None = None) -> str:
        scores = self.op("MatMul", q, self.op("Transpose", k, perm=[0, 1, 3, 2]))
        scores = self.op("Mul", scores, self.scalar(float(head_dim) ** -0.5))
        if mask is not None:
            scores = self.op("Add", scores, mask)
        return self.op("MatMul", self.op("Softmax", scores, axis=-1), v)

    def split3(self, x: str, axis: int = -1) -> list[str]:
        return self.ops("Split", x, outputs=3, axis=axis, num_outputs=3) if OPSET >= 18 else self.ops("Split", x, outputs=3, axis=axis)

    def model(self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], name: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, list(self.initializers.values()))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="flashcaption")
        model.ir_version = 8
        return model


def _layer_count(weights: dict[str, np.ndarray], stack: str) -> int:
    return len({name.split("/")[1] for name in weights if re.match(rf"{stack}/layer_\d+/", name)})


def build_encoder(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    g = _Graph(weights)
    heads = int(weights["encoder/num_heads"])
    width = weights["encoder/conv1/weight"].shape[0]
    head_dim = width // heads
    x = g.gelu(g.op("Conv", "mel", g.weight("encoder/conv1/weight"), g.weight("encoder/conv1/bias"), pads=[1, 1]))
    x = g.gelu(g.op("Conv", x, g.weight("encoder/conv2/weight"), g.weight("encoder/conv2/bias"), pads=[1, 1], strides=[2]))
    x = g.op("Transpose", x, perm=[0, 2, 1])  # [1, N, d]
    frames = g.op("Slice", g.op("Shape", x), g.ints(1), g.ints(2))
    positions = g.op("Slice", g.weight("encoder/position_encodings/encodings"), g.ints(0), frames, g.ints(0))
    x = g.op("Add", x, positions)
    for layer in range(_layer_count(weights, "encoder")):
        prefix = f"encoder/layer_{layer}"
        h = g.layer_norm(x, f"{prefix}/self_attention/layer_norm")
        q, k, v = (g.heads(t, heads) for t in g.split3(g.linear(h, f"{prefix}/self_attention/linear_0")))
        x = g.op("Add", x, g.linear(g.merge(g.attend(q, k, v, head_dim)), f"{prefix}/self_attention/linear_1"))
        h = g.layer_norm(x, f"{prefix}/ffn/layer_norm")
        x = g.op("Add", x, g.linear(g.gelu(g.linear(h, f"{prefix}/ffn/linear_0")), f"{prefix}/ffn/linear_1"))
    hidden = g.layer_norm(x, "encoder/layer_norm")
    g.op("Identity", hidden, name="hidden")
    outputs = [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [1, "frames", width])]
    # The decoder's cross-attention keys and values depend only on the audio: computed here.
    for layer in range(_layer_count(weights, "decoder")):
        kv = g.linear(hidden, f"decoder/layer_{layer}/attention/linear_1")
        k, v = g.ops("Split", kv, outputs=2, axis=-1)
        g.op("Identity", g.heads(k, heads), name=f"cross_k_{layer}")
        g.op("Identity", g.heads(v, heads), name=f"cross_v_{layer}")
        for kind in "kv":
            outputs.append(helper.make_tensor_value_info(f"cross_{kind}_{layer}", TensorProto.FLOAT, [1, heads, "frames", head_dim]))
    inputs = [helper.make_tensor_value_info("mel", TensorProto.FLOAT, [1, weights["encoder/conv1/weight"].shape[1], "mel_frames"])]
    return g.model(inputs, outputs, "whisper_encoder")


def build_decoder(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    g = _Graph(weights)
    heads = int(weights["decoder/num_heads"])
    vocab, width = weights["decoder/embeddings/weight"].shape
    head_dim = width // heads
    layers = _layer_count(weights, "decoder")
    tokens_length = g.op("Slice", g.op("Shape", "tokens"), g.ints(1), g.ints(2))
    end = g.op("Add", "offset", tokens_length)
    positions = g.op("Slice", g.weight("decoder/position_encodings/encodings"), "offset", end, g.ints(0))
    x = g.op("Add", g.op("Gather", g.weight("decoder/embeddings/weight"), "tokens"), positions)
    # Causal mask over [past + new] keys: new token i may see keys up to offset + i.
    last = g.op("Squeeze", end, g.ints(0))
    query_at = g.op("Unsqueeze", g.op("Range", g.op("Squeeze", "offset", g.ints(0)), last, g.index(1)), g.ints(1))
    key_at = g.op("Unsqueeze", g.op("Range", g.index(0), last, g.index(1)), g.ints(0))
    mask = g.op("Where", g.op("Greater", key_at, query_at), g.scalar(-1e9), g.scalar(0.0))
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "tokens", vocab])]
    inputs = [
        helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "tokens"]),
        helper.make_tensor_value_info("offset", TensorProto.INT64, [1]),
    ]
    for layer in range(layers):
        prefix = f"decoder/layer_{layer}"
        for kind in "kv":
            inputs.append(helper.make_tensor_value_info(f"self_{kind}_{layer}", TensorProto.FLOAT, ["batch", heads, "past", head_dim]))
        h = g.layer_norm(x, f"{prefix}/self_attention/layer_norm")
        q, k, v = (g.heads(t, heads) for t in g.split3(g.linear(h, f"{prefix}/self_attention/linear_0")))
        k = g.op("Concat", f"self_k_{layer}", k, axis=2, name=f"new_self_k_{layer}")
        v = g.op("Concat", f"self_v_{layer}", v, axis=2, name=f"new_self_v_{layer}")
        for kind in "kv":
            outputs.append(helper.make_tensor_value_info(f"new_self_{kind}_{layer}", TensorProto.FLOAT, ["batch", heads, "total", head_dim]))
        x = g.op("Add", x, g.linear(g.merge(g.attend(q, k, v, head_dim, mask)), f"{prefix}/self_attention/linear_1"))
        h = g.layer_norm(x, f"{prefix}/attention/layer_norm")
        q = g.heads(g.linear(h, f"{prefix}/attention/linear_0"), heads)
        attended = g.attend(q, f"cross_k_{layer}", f"cross_v_{layer}", head_dim)
        x = g.op("Add", x, g.linear(g.merge(attended), f"{prefix}/attention/linear_2"))
        h = g.layer_norm(x, f"{prefix}/ffn/layer_norm")
        x = g.op("Add", x, g.linear(g.gelu(g.linear(h, f"{prefix}/ffn/linear_0")), f"{prefix}/ffn/linear_1"))
    for layer in range(layers):
        for kind in "kv":
            inputs.append(helper.make_tensor_value_info(f"cross_{kind}_{layer}", TensorProto.FLOAT, ["batch", heads, "frames", head_dim]))
    x = g.layer_norm(x, "decoder/layer_norm")
    g.op("MatMul", x, g.weight("decoder/embeddings/weight", transpose=True), name="logits")
    return g.model(inputs, outputs, "whisper_decoder")


def convert(checkpoint: Path, out: Path, quantize: bool = False) -> dict[str, str]:
    """Write ``encoder.onnx``, ``decoder.onnx`` and the tokenizer and config of a CTranslate2
    Whisper checkpoint directory into ``out``; ``quantize``: int8 weights (dynamic
    quantisation of the matrix products). Returns the written files."""
    checkpoint, out = Path(checkpoint), Path(out)
    weights = read_ct2(checkpoint / "model.bin")
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, model in (("encoder", build_encoder(weights)), ("decoder", build_decoder(weights))):
        path = out / f"{name}.onnx"
        # Protocol buffers stop at 2 GB: large checkpoints keep their weights beside the graph.
        large = sum(t.ByteSize() for t in model.graph.initializer) > 1_800_000_000
        onnx.save_model(model, str(path), save_as_external_data=large, all_tensors_to_one_file=True, location=f"{name}.onnx.data")
        if quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantized = out / f"{name}.int8.onnx"
            quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8)
            quantized.replace(path)
        written[name] = str(path)
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    config["n_text_layers"] = _layer_count(weights, "decoder")
    config["n_text_heads"] = int(weights["decoder/num_heads"])
    config["n_text_state"] = int(weights["decoder/embeddings/weight"].shape[1])
    config["n_vocab"] = int(weights["decoder/embeddings/weight"].shape[0])
    config["n_mels"] = int(weights["encoder/conv1/weight"].shape[1])
    (out / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    (out / "tokenizer.json").write_bytes((checkpoint / "tokenizer.json").read_bytes())
    written.update(config=str(out / "config.json"), tokenizer=str(out / "tokenizer.json"))
    return written
