"""The graph signature a manifest promises, and its check against an ONNX graph: the tensors' names in order,
float32, a dynamic batch axis, then the manifest's dims. Export checks it on the graph it wrote (training.export,
training.encoder_export), the service on the session it loads (service.runtime's `signature`)."""

from __future__ import annotations

from typing import NamedTuple

# (inputs, outputs), each tensor's name -> its dims after the batch axis
Signature = tuple[dict[str, list[int]], dict[str, list[int]]]


class TensorSignature(NamedTuple):
    """One graph input or output as ONNX describes it: dims are ints, or a name / None where dynamic."""

    name: str
    dtype: str  # ONNX Runtime's spelling: "tensor(float)"
    shape: tuple[int | str | None, ...]


class SignatureError(ValueError):
    """A graph whose inputs or outputs disagree with what its manifest promises."""


def generator_signature(z_dim: int, num_classes: int, output_shape: list[int]) -> Signature:
    """The generator contract per tensor, after the batch axis: inputs z (and c), output x."""
    inputs = {"z": [z_dim]} | ({"c": [num_classes]} if num_classes else {})
    return inputs, {"x": list(output_shape)}


def encoder_signature(z_dim: int, num_classes: int, output_shape: list[int]) -> Signature:
    """The encoder graph: x [N, *output_shape] (and c [N, K]) -> z [N, z_dim] (and logits [N, K])."""
    classes = {"c": [num_classes]} if num_classes else {}
    logits = {"logits": [num_classes]} if num_classes else {}
    return {"x": list(output_shape)} | classes, {"z": [z_dim]} | logits


def check_signature(
    inputs: list[TensorSignature], outputs: list[TensorSignature], expected: Signature
) -> None:
    """Names in order, float32, a dynamic batch axis, then exactly the expected dims."""
    for kind, found, want in (("inputs", inputs, expected[0]), ("outputs", outputs, expected[1])):
        if [t.name for t in found] != list(want):
            raise SignatureError(f"graph {kind} {[t.name for t in found]} != expected {list(want)}")
    for tensor in [*inputs, *outputs]:
        tail = (expected[0] | expected[1])[tensor.name]
        if tensor.dtype != "tensor(float)":
            raise SignatureError(f"{tensor.name}: dtype {tensor.dtype}, expected tensor(float)")
        if len(tensor.shape) != 1 + len(tail) or isinstance(tensor.shape[0], int):
            raise SignatureError(
                f"{tensor.name}: shape {list(tensor.shape)}: needs a dynamic batch axis and {len(tail)} more dims"
            )
        if list(tensor.shape[1:]) != tail:
            raise SignatureError(
                f"{tensor.name}: dims {list(tensor.shape[1:])} disagree with the manifest's {tail}"
            )
