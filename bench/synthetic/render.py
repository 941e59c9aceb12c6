"""Paint a sampled scene into an RGB image.

Painting follows draw order, so the pixels an object ends up owning are
exactly its visible mask: the annotations and the picture cannot disagree.
"""

from __future__ import annotations

import numpy as np

from bench.synthetic.scene import Scene


def render(scene: Scene) -> np.ndarray:
    """The scene as a ``uint8 (height, width, 3)`` RGB array."""
    image = scene.background.copy()
    if scene.crowd is not None:
        image[scene.crowd.full] = scene.crowd.rgb
    for obj in scene.objects:
        window = obj.raster.window
        image[window][obj.full[window]] = obj.rgb
    return image
