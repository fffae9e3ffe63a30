"""Text encoders for the worker: ONNX artifacts from ``export/``, run by onnxruntime.

``load_encoder(dir)`` verifies an artifact and returns an :class:`Encoder`;
:class:`Registry` finds the published version on shared storage.
"""

from encoders.registry import Registry
from encoders.runtime import Encoder, EncoderInfo, load_encoder

__all__ = ["Encoder", "EncoderInfo", "Registry", "load_encoder"]
