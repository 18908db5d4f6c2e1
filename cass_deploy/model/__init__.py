"""Pruning-aware reference detector: config, blocks, predictor, pruner, head, interface."""

from cass_deploy.model.detector import ModelConfig, PrunedDetector
from cass_deploy.model.head import decode, detection_loss, detection_targets
from cass_deploy.model.interface import INPUT_NAME, PrunableModel, output_names_for
from cass_deploy.model.predictor import ImportancePredictor
from cass_deploy.model.pruner import (PRUNER_MODES, TOPK_LIMIT, Pruner, PrunerConfig, allocate_quotas,
                                      band_boundaries, band_positive_share, compute_k)

__all__ = ["ModelConfig", "PrunedDetector", "PrunerConfig", "Pruner", "ImportancePredictor",
           "PrunableModel", "INPUT_NAME", "output_names_for", "detection_targets", "detection_loss",
           "decode", "band_positive_share", "band_boundaries", "allocate_quotas", "compute_k",
           "PRUNER_MODES", "TOPK_LIMIT"]
