"""cass-deploy: token-pruning detectors from CASS training to the edge GPU."""

__version__ = "0.1.0"
