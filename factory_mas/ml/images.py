"""Pictures into model input: the one place an image becomes the PPE model's pixels, for
camera frames and training renders alike, so the two can never be scaled differently."""

from __future__ import annotations

import numpy as np
from PIL import Image


def to_model_input(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    rgb = image.convert("RGB")
    if rgb.size != (width, height):
        # The whole frame is scaled to the input, not cropped: a gate camera frames the
        # worker, and cropping would cut off the helmet or the boots first.
        rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)
