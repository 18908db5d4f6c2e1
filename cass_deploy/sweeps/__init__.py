"""Sweeps of independent units (``ablate``, ``tune``) in this process or on Ray (SPEC §7d)."""
