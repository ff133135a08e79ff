#!/usr/bin/env python3
"""Writes the tiny ONNX models of the classifier's tests (crates/classifier/tests/models/), whose
answers are known exactly, and SHA256SUMS beside them.

    pip install onnx==1.23.2
    python3 scripts/make-test-models.py           # (re)write the models
    python3 scripts/make-test-models.py --check   # fail unless the committed files are what this writes

The models (float32, opset 13, IR version 8, batch axis free):
- flat_nchw_4x6.onnx: input [N, 3, 4, 6] (height 4, width 6), output its own values flattened,
  [N, 72]: the test sees the input tensor exactly as the pre-processing wrote it.
- flat_nhwc_4x6.onnx: the same for input [N, 4, 6, 3].
- means_free.onnx: input [N, 3, H, W] with H and W free, output the mean of each channel [N, 3]
  (ReduceMean over H and W): a solid-colour image has a computable answer at any size.
- means_softmax.onnx: the same followed by a softmax over the channels: it outputs probabilities.
"""
import hashlib
import pathlib
import sys

import onnx
from onnx import TensorProto, helper

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/classifier/tests/models"


def model(name, input_shape, output_shape, nodes):
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, output_shape)],
    )
    m = helper.make_model(
        graph,
        producer_name="imgclass make-test-models.py",
        opset_imports=[helper.make_opsetid("", 13)],
    )
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m.SerializeToString()


def models():
    flatten = [helper.make_node("Flatten", ["image"], ["scores"], axis=1)]
    means = helper.make_node("ReduceMean", ["image"], ["means"], axes=[2, 3], keepdims=0)
    return {
        "flat_nchw_4x6.onnx": model("flat_nchw_4x6", ["N", 3, 4, 6], ["N", 72], flatten),
        "flat_nhwc_4x6.onnx": model("flat_nhwc_4x6", ["N", 4, 6, 3], ["N", 72], flatten),
        "means_free.onnx": model(
            "means_free",
            ["N", 3, "H", "W"],
            ["N", 3],
            [helper.make_node("ReduceMean", ["image"], ["scores"], axes=[2, 3], keepdims=0)],
        ),
        "means_softmax.onnx": model(
            "means_softmax",
            ["N", 3, "H", "W"],
            ["N", 3],
            [means, helper.make_node("Softmax", ["means"], ["scores"], axis=1)],
        ),
    }


def main():
    check = sys.argv[1:] == ["--check"]
    files = models()
    sums = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in sorted(files.items())
    )
    files["SHA256SUMS"] = sums.encode()
    bad = []
    for name, data in sorted(files.items()):
        path = OUT / name
        if check:
            if not path.is_file() or path.read_bytes() != data:
                bad.append(name)
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            print(f"{path} ({len(data)} bytes)")
    if bad:
        sys.exit(f"differ from what {sys.argv[0]} writes (onnx {onnx.__version__}): {', '.join(bad)}")


if __name__ == "__main__":
    main()
