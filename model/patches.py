"""Where an entropy patcher would cut (BLT, Pagnoni et al. 2024), to set beside MegaByte's fixed patches.

BLT starts a new patch at a byte whose next-byte entropy (under a small byte model) is high:
either above a global threshold, or risen above the entropy before it by more than a
relative threshold. Here the entropy is the one `score` reports for each byte.
"""

from __future__ import annotations

import numpy as np


def entropy_boundaries(entropy: np.ndarray, threshold: float | None = None, jump: float | None = None) -> np.ndarray:
    """The bytes that start a patch: byte 0, every byte whose entropy is above `threshold`
    bits, and every byte whose entropy exceeds the previous byte's by more than `jump` bits."""
    entropy = np.asarray(entropy, np.float64)
    if not len(entropy):
        return np.zeros(0, np.int64)
    starts = np.zeros(len(entropy), bool)
    starts[0] = True
    if threshold is not None:
        starts |= entropy > threshold
    if jump is not None:
        starts[1:] |= np.diff(entropy) > jump
    return np.flatnonzero(starts)


def threshold_for_mean_size(entropy: np.ndarray, mean_size: float) -> float:
    """The global threshold whose patches average about `mean_size` bytes: the entropy
    exceeded by one byte in `mean_size`. With it, both patchers run the global model
    equally often, so what differs is only where they cut."""
    entropy = np.asarray(entropy, np.float64)
    if not len(entropy):
        return 0.0
    return float(np.quantile(entropy, 1 - 1 / mean_size))


def patch_sizes(boundaries: np.ndarray, n: int) -> np.ndarray:
    """The length of each patch that the starts `boundaries` cut n bytes into."""
    return np.diff(np.append(np.asarray(boundaries, np.int64), n))
