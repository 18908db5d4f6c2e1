"""Runners: one name-keyed numpy interface over torch, ONNX Runtime and TensorRT.

Only the backend-free contract is imported here; import a concrete runner from its module
(``cass_deploy.runtime.ort_runner``, ``.trt_runner``, ``.torch_runner``) so that the ONNX
Runtime and TensorRT paths never import torch.
"""

from cass_deploy.runtime.base import InferenceError, Runner, TensorSpec, validate_feed

__all__ = ["InferenceError", "Runner", "TensorSpec", "validate_feed"]
