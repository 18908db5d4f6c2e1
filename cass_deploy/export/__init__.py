"""Export: checkpoint -> ONNX -> TensorRT engine, with limits checked first and a manifest.

Submodules import their heavy dependencies (torch, onnx, tensorrt) lazily; importing this
package costs nothing.
"""
