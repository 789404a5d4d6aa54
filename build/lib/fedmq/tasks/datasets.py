"""Loaders for the built-in small tasks: scikit-learn's digits and seeded synthetic data.

Invariants: numpy and the standard library at import time (scikit-learn is
imported only when the digits task is loaded); every loader is a pure function
of its :class:`DataConfig`, so the coordinator and each agent build identical
arrays without exchanging them.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fedmq.tasks.spec import DataConfig, Dataset

#: share of the digits data held out for the coordinator's test set
DIGITS_TEST_FRACTION = 0.2

BLOBS_FEATURES = 10
BLOBS_CLASSES = 10
BLOBS_TRAIN, BLOBS_TEST = 5000, 1000
#: class centres ~ N(0, spread^2) per feature, unit noise: the Bayes-optimal
#: (linear) classifier scores about 0.985 on the default seed, so a run has room to show
BLOBS_SPREAD = 1.5

LINREG_FEATURES = 10
LINREG_TRAIN, LINREG_TEST = 2000, 500
#: target noise std; a perfect fit reaches test MSE of about its square (0.01)
LINREG_NOISE = 0.1


def _split(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64] | npt.NDArray[np.float32],
    n_test: int,
    seed: int,
) -> Dataset:
    """A seeded shuffle, then the last ``n_test`` rows become the test set."""
    perm = np.random.default_rng(seed).permutation(len(x))
    train, test = perm[: len(x) - n_test], perm[len(x) - n_test :]
    return Dataset(x[train], y[train], x[test], y[test])


def load_digits(cfg: DataConfig) -> Dataset:
    """scikit-learn's 8x8 digits (1,797 images, shipped with it): a seeded 80/20 split.

    Pixels are divided by 16 (their maximum), giving float32 in [0, 1].

    Raises:
        ImportError: when scikit-learn is not installed, saying how to get it.
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as exc:
        raise ImportError("the digits task needs scikit-learn: pip install scikit-learn") from exc
    bunch = sklearn_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    return _split(x, y, round(len(x) * DIGITS_TEST_FRACTION), cfg.seed)


def load_blobs(cfg: DataConfig) -> Dataset:
    """Gaussian class blobs in 10 dimensions, 10 classes, balanced, from ``cfg.seed``."""
    rng = np.random.default_rng([cfg.seed, 1])
    centres = rng.normal(0.0, BLOBS_SPREAD, size=(BLOBS_CLASSES, BLOBS_FEATURES))
    n = BLOBS_TRAIN + BLOBS_TEST
    y = np.arange(n, dtype=np.int64) % BLOBS_CLASSES
    x = (centres[y] + rng.normal(0.0, 1.0, size=(n, BLOBS_FEATURES))).astype(np.float32)
    return _split(x, y, BLOBS_TEST, cfg.seed)


def load_linreg(cfg: DataConfig) -> Dataset:
    """``y = x @ w + b + noise`` with standard-normal ``x`` and ``w``, from ``cfg.seed``."""
    rng = np.random.default_rng([cfg.seed, 2])
    w = rng.normal(size=LINREG_FEATURES)
    b = rng.normal()
    n = LINREG_TRAIN + LINREG_TEST
    x = rng.normal(size=(n, LINREG_FEATURES))
    y = x @ w + b + rng.normal(0.0, LINREG_NOISE, size=n)
    return _split(x.astype(np.float32), y.astype(np.float32), LINREG_TEST, cfg.seed)
