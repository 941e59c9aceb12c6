"""The data that flows through a run: images, samples, and the requests adapters answer.

A :class:`Task` turns dataset records into :class:`Sample` objects, and each
sample into one or more requests. An :class:`~bench.adapter.Adapter` answers
requests; the task parses the answers and scores them. Requests carry their
sample so an adapter can group work by image, and so the ``oracle`` adapter
can read the gold answer (no real adapter should).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from bench.regions import Region


@dataclass(frozen=True)
class ImageRef:
    """A reference to an image file, opened only when an adapter asks for pixels.

    ``key`` identifies the image across samples (requests are grouped by it);
    ``size`` is ``(width, height)`` when the annotation file gives it.
    """

    key: str
    path: Path | None = None
    size: tuple[int, int] | None = None

    def load(self) -> Any:
        """Open the image as an RGB ``PIL.Image``; raises a clear error if the file is missing."""
        from PIL import Image

        from bench.errors import DataError

        if self.path is None:
            raise DataError(f"image {self.key!r} has no file path; pass --data-root with the images")
        try:
            with Image.open(self.path) as image:
                return image.convert("RGB")
        except FileNotFoundError:
            raise DataError(
                f"image file {self.path} not found (image {self.key!r}); check --data-root "
                "or the image directory in paths.json"
            ) from None


@dataclass(frozen=True)
class Sample:
    """One evaluation item.

    ``prompt`` contains ``<region1>``, ``<region2>`` ... placeholders for ``regions``
    in order. ``target`` is whatever the task scores against (a label, a list of
    reference captions, a box); it must be JSON-serialisable because it is saved
    with every prediction. ``gold_answer`` is the text a perfect model would give.
    """

    id: str
    image: ImageRef
    prompt: str
    target: Any
    regions: tuple[Region, ...] = ()
    gold_answer: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # Name of the task the sample belongs to; set by the runner.
    task: str = ""


@dataclass(frozen=True)
class GenerationRequest:
    """Generate free text for ``prompt`` (with region placeholders) on ``sample.image``."""

    sample: Sample
    prompt: str
    regions: tuple[Region, ...]
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()
    # The closed answer set, when the task has one (POPE: yes/no; classification:
    # category names). Models are free to ignore it; baselines sample from it.
    choices: tuple[str, ...] = ()

    kind = "generate"

    @property
    def image(self) -> ImageRef:
        return self.sample.image

    def content(self) -> dict[str, Any]:
        """Everything that determines the answer, for the cache key."""
        return {
            "kind": self.kind,
            "image": self.image.key,
            "prompt": self.prompt,
            "regions": [r.to_json() for r in self.regions],
            "max_new_tokens": self.max_new_tokens,
            "stop": list(self.stop),
            "choices": list(self.choices),
        }


@dataclass(frozen=True)
class LoglikelihoodRequest:
    """Score each candidate continuation of ``prompt``: the sum of its token log-probabilities."""

    sample: Sample
    prompt: str
    regions: tuple[Region, ...]
    continuations: tuple[str, ...]

    kind = "loglikelihood"

    @property
    def image(self) -> ImageRef:
        return self.sample.image

    def content(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "image": self.image.key,
            "prompt": self.prompt,
            "regions": [r.to_json() for r in self.regions],
            "continuations": list(self.continuations),
        }


Request = Union[GenerationRequest, LoglikelihoodRequest]
# What an adapter returns for a request: text for generation, one score per continuation.
Output = Union[str, list[float]]
