"""Quantize the all-MiniLM-L6-v2 ONNX graph to int8 weights, then check it against the fp32 graph.

ONNX Runtime's own dynamic quantization (`onnxruntime.quantization.quantize_dynamic`, from the PyPI wheel
`scripts/setup` installs): the weights of every MatMul become int8 with one scale per output channel, and the
activations are quantized to uint8 at run time, batch by batch. No calibration data is needed.

The result is checked three ways:
- the sha256 of the written file (quantization is deterministic for pinned package versions);
- the reference sentence pairs of the fp32 export: each cosine within COSINE_TOLERANCE of sentence-transformers;
- the int8 and fp32 embeddings of CHECK_TEXTS: every cosine between the two at least MIN_AGREEMENT.

Usage: python3 quantize_minilm_onnx.py FP32_ONNX MODEL_DIR OUT_ONNX [--expect-sha256 HEX]
"""

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_minilm_onnx import REFERENCE_PAIRS, embed  # noqa: E402

COSINE_TOLERANCE = 0.02
MIN_AGREEMENT = 0.98
CHECK_TEXTS = [
    "How do I reset my password if I forgot it?",
    "The quarterly sales report is due on Friday, please send the numbers by Thursday noon.",
    "Our Kubernetes cluster ran out of memory during the deploy of the billing service.",
    "I adopted a rescue greyhound named Biscuit last spring and she loves long walks.",
    "Ticket QX-7731 tracks the flaky checkout test on the release branch.",
    "Can you recommend a vegetarian lasagna recipe that freezes well?",
    "The meeting moved to 3pm in room 4B; bring the printed slides.",
    "what did we decide about the database migration last week",
]


def session(path: Path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def check(int8_path: Path, fp32_path: Path, model_dir: Path) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    quantized, full = session(int8_path), session(fp32_path)
    for left, right, expected in REFERENCE_PAIRS:
        a, b = embed(quantized, tokenizer, [left, right])
        cosine = float(np.dot(a, b))
        status = "ok" if abs(cosine - expected) <= COSINE_TOLERANCE else "MISMATCH"
        print(f"  int8 cosine {cosine:.6f} reference {expected:.6f} {status}: {left!r} / {right!r}")
        if status != "ok":
            sys.exit(f"int8 model strays from sentence-transformers (tolerance {COSINE_TOLERANCE})")
    agreement = (embed(quantized, tokenizer, CHECK_TEXTS) * embed(full, tokenizer, CHECK_TEXTS)).sum(axis=1)
    print(f"  int8 against fp32 over {len(CHECK_TEXTS)} texts: cosine min {agreement.min():.4f} mean {agreement.mean():.4f}")
    if agreement.min() < MIN_AGREEMENT:
        sys.exit(f"int8 embeddings differ from fp32 (cosine {agreement.min():.4f} < {MIN_AGREEMENT})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp32", type=Path)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--expect-sha256", default=None)
    args = parser.parse_args()

    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = args.out.with_suffix(".onnx.tmp")
    quantize_dynamic(args.fp32, tmp, weight_type=QuantType.QInt8, per_channel=True)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    print(f"  {args.out.name} sha256 {digest}")
    if args.expect_sha256 and digest != args.expect_sha256:
        tmp.unlink()
        sys.exit(f"sha256 mismatch: expected {args.expect_sha256}, got {digest}")
    check(tmp, args.fp32, args.model_dir)
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
