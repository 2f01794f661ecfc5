"""An independent digit classifier for judging the tiny model's images.

It shares no code with comfyc or with the training script: a scikit-learn SVC is trained on the
raw 8x8 digits dataset (values 0..16), and images of any size are brought to that format by area
averaging. Nothing is cached on disk; training takes well under a second.

Images are expected as the tiny model draws them: **dark ink on white paper**, float RGB in [0, 1].
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC

__all__ = ["DigitClassifier", "heldout_accuracy", "to_digit_features", "train_classifier"]


def to_digit_features(images: np.ndarray) -> np.ndarray:
    """Turns RGB paper images into sklearn-digits feature rows.

    Args:
        images: float [B, H, W, 3] in [0, 1], dark ink on white paper, any H and W (resized to a
            multiple of 8 by nearest-neighbour repetition when not divisible, then area-averaged).

    Returns:
        float64 [B, 64]: ink on sklearn's 0..16 scale, row-major 8x8.
    """
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected images [B, H, W, 3], got shape {images.shape}")
    ink = 1.0 - images.mean(axis=-1)
    b, h, w = ink.shape
    if h % 8 or w % 8:
        # NOTE: repeat every pixel 8 times so that each 8x8 cell gets a whole number of them.
        ink = ink.repeat(8, axis=1).repeat(8, axis=2)
        h, w = h * 8, w * 8
    cells = ink.reshape(b, 8, h // 8, 8, w // 8).mean(axis=(2, 4))
    return (np.clip(cells, 0.0, 1.0) * 16.0).reshape(b, 64)


class DigitClassifier:
    """An RBF SVC on the 8x8 digits, applied to area-averaged images."""

    def __init__(self, model: SVC) -> None:
        """Wraps a fitted SVC.

        Args:
            model: An SVC fitted on sklearn digits features (0..16, 64 columns).
        """
        self.model = model

    def classify(self, images: np.ndarray) -> np.ndarray:
        """Classifies paper images.

        Args:
            images: float [B, H, W, 3] in [0, 1], dark ink on white paper.

        Returns:
            int64 [B]: the predicted digits.
        """
        return self.model.predict(to_digit_features(images)).astype(np.int64)


def _fit(features: np.ndarray, labels: np.ndarray) -> SVC:
    model = SVC(C=10.0, gamma=0.001, kernel="rbf")
    model.fit(features, labels)
    return model


def train_classifier() -> DigitClassifier:
    """Trains the classifier on the whole digits dataset (deterministic, < 1 s)."""
    digits = load_digits()
    return DigitClassifier(_fit(digits.data, digits.target))


def heldout_accuracy(seed: int = 0) -> float:
    """Returns the accuracy of the same classifier trained on 70% and tested on a held-out 30%.

    Args:
        seed: The split's random state.
    """
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.3, random_state=seed, stratify=digits.target
    )
    return float((_fit(x_train, y_train).predict(x_test) == y_test).mean())
