"""Pruning-aware reference detector: blocks, predictor, pruner, head, detector, interface, checkpoint.

Import from the submodules (``cass_deploy.model.detector``, ``.pruner``, ...): this package
imports nothing, so the torch-free ``interface`` can be read without loading torch.
"""
