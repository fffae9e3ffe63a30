"""torch -> ONNX, and the int8 / fp16 variants derived from the fp32 graph."""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Any

import torch

OPSET = 17
OUTPUT = "last_hidden_state"


def input_names(model: Any, tokenizer: Any) -> list[str]:
    """input_ids, attention_mask, and token_type_ids when both the model and tokenizer use it."""
    names = ["input_ids", "attention_mask"]
    takes = "token_type_ids" in inspect.signature(model.forward).parameters
    if takes and "token_type_ids" in getattr(tokenizer, "model_input_names", []):
        names.append("token_type_ids")
    return names


# torch is Any where it is not installed (the worker env type-checks this package too).
class _LastHidden(torch.nn.Module):  # type: ignore[misc, unused-ignore]
    """Positional inputs in a fixed order, one tensor out: what the exporter wants."""

    def __init__(self, model: Any, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(**dict(zip(self.names, tensors, strict=True))).last_hidden_state
        return out


def export_fp32(model: Any, tokenizer: Any, path: Path, max_length: int) -> list[str]:
    """Write the fp32 graph with dynamic batch and sequence axes; returns its input names."""
    names = input_names(model, tokenizer)
    # Two rows of different lengths, so padding and masking are traced, not constant-folded.
    sample = tokenizer(
        ["a short one", "a somewhat longer example sentence for tracing the graph"],
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    wrapper = _LastHidden(model, names)
    # A fresh Module is in training mode and the exporter *restores* that mode afterwards,
    # which would switch the wrapped model's dropout on for the parity run: pin eval.
    wrapper.eval()
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, OUTPUT]}
    with warnings.catch_warnings():
        # TracerWarnings about shape arithmetic in transformers' mask code: the branches
        # they mention are the same for every (batch, sequence), checked by the parity run.
        warnings.simplefilter("ignore")
        # The TorchScript exporter: the dynamo one needs onnxscript and still trips on
        # transformers' mask helpers with dynamic sequence lengths.
        torch.onnx.export(
            wrapper,
            tuple(sample[n] for n in names),
            str(path),
            input_names=names,
            output_names=[OUTPUT],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    model.eval()
    return names


def quantize_int8(fp32: Path, out: Path) -> None:
    """Dynamic int8, MatMul weights only, per output channel.

    Quantizing every op (Gather embeddings, Add, ...) drops cosine to about 0.90; MatMul-only
    per-channel keeps it near 0.99 and still carries most of the speed-up.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32),
        str(out),
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        weight_type=QuantType.QInt8,
    )


def convert_fp16(fp32: Path, out: Path) -> None:
    """fp16 weights and compute with fp32 inputs/outputs, for the CUDA provider."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(fp32))
    onnx.save(convert_float_to_float16(model, keep_io_types=True), str(out))
