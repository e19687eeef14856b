"""Build the int8 all-MiniLM-L6-v2 graph: fused transformer operators, int8 weights; check it against fp32.

First the encoder is built again with two of ONNX Runtime's transformer operators
(`export_minilm_onnx.build_model(fused=True)`: Attention and Gelu; the same arithmetic as the plain fp32 graph).
Then ONNX Runtime's
own dynamic quantization (`onnxruntime.quantization.quantize_dynamic`, from the PyPI wheel `scripts/setup`
installs) makes the weights of every MatMul and of the packed attention projections int8, with one scale per
output channel, and quantizes the activations to uint8 at run time, batch by batch (MatMulInteger, QAttention).
No calibration data is needed.

The result is checked three ways:
- the sha256 of the written file (building and quantization are deterministic for pinned package versions);
- the reference sentence pairs of the fp32 export: each cosine within COSINE_TOLERANCE of sentence-transformers;
- the int8 and (plain) fp32 embeddings of CHECK_TEXTS: every cosine between the two at least MIN_AGREEMENT.

Usage: python3 quantize_minilm_onnx.py FP32_ONNX MODEL_DIR OUT_ONNX [--expect-sha256 HEX]
(MODEL_DIR: the model package's folder, with the safetensors weights and the tokenizer)
"""

import argparse
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_minilm_onnx import build_model, check_reference_pairs, check_sha256, embed, session_for  # noqa: E402

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


def check(int8_path: Path, fp32_path: Path, model_dir: Path) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    quantized, full = session_for(int8_path), session_for(fp32_path)
    check_reference_pairs(quantized, tokenizer, COSINE_TOLERANCE, "int8")
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

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fused = args.out.with_suffix(".fused.tmp")
    onnx.save_model(build_model(args.model_dir, fused=True), str(fused))
    tmp = args.out.with_suffix(".onnx.tmp")
    # The contrib operators' outputs have no inferred type; they are all float.
    quantize_dynamic(
        fused,
        tmp,
        weight_type=QuantType.QInt8,
        per_channel=True,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    fused.unlink()
    check_sha256(tmp, args.out.name, args.expect_sha256)
    check(tmp, args.fp32, args.model_dir)
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
