"""The adapter API: how region-bench talks to a model.

An adapter answers two kinds of requests, always in batches that arrive grouped
by image (so a model can encode an image once for all its regions and
questions):

* :meth:`Adapter.generate` returns one string per :class:`GenerationRequest`;
* :meth:`Adapter.loglikelihood` returns, per :class:`LoglikelihoodRequest`, the
  summed log-probability of each candidate continuation.

Adapters declare what they can take in :class:`Capabilities`; tasks adapt their
requests to it (boxes only, at most ``max_regions``, likelihood or not).
Constructor keyword arguments are the ``--model-args``; their type hints say how
the strings from the command line are converted.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from bench.errors import ConfigError
from bench.regions import Region
from bench.types import GenerationRequest, LoglikelihoodRequest


@dataclass(frozen=True)
class Capabilities:
    """What a model accepts.

    ``needs_images`` False means the adapter never opens image files (replay,
    oracle), so tasks can run on question files alone.
    """

    boxes: bool = True
    masks: bool = False
    max_regions: int | None = None
    loglikelihood: bool = False
    needs_images: bool = True

    def adapt(self, regions: Sequence[Region]) -> tuple[Region, ...]:
        """Regions as this model takes them, so no task special-cases region formats.

        Box-only models get the boxes (masks dropped); mask-taking models get
        box and mask, and a mask-only model gets a box without a mask as a
        rectangular polygon. Every task region is validated, so it has a box.
        """
        if not (self.boxes or self.masks):
            raise ConfigError("the model takes neither boxes nor masks, so it cannot be asked about regions")
        if self.max_regions is not None and len(regions) > self.max_regions:
            raise ConfigError(f"{len(regions)} regions in one query, but the model takes at most {self.max_regions}")
        if not self.masks:
            return tuple(Region(box=r.box) for r in regions)
        if self.boxes:
            return tuple(regions)
        return tuple(r if r.mask is not None else _rectangle(r) for r in regions)


def _rectangle(region: Region) -> Region:
    assert region.box is not None
    x1, y1, x2, y2 = region.box
    return Region(box=region.box, mask=[[x1, y1, x2, y1, x2, y2, x1, y2]])


class Adapter(ABC):
    """Base class for every model adapter. Subclasses set ``name`` and ``capabilities``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # Bump when a change to the adapter's code changes its answers: invalidates caches.
    version: ClassVar[str] = "1"
    capabilities: ClassVar[Capabilities] = Capabilities()

    # Set by bench.registry.build_adapter: the parsed --model-args, for fingerprint and results.
    init_args: dict[str, Any]

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        """Answer each request with free text (same order as ``requests``)."""

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[list[float]]:
        """Summed log-probability of each continuation of each request."""
        raise NotImplementedError(f"adapter {self.name!r} does not score continuations")

    def fingerprint(self) -> str:
        """A stable hash of everything that determines this adapter's answers.

        Part of the cache key of every prediction. The default covers the
        adapter's name, version and arguments; adapters that load weights or
        answer files should add a checksum of them via :meth:`fingerprint_extra`.
        """
        payload = {
            "name": self.name,
            "version": self.version,
            "args": {k: str(v) for k, v in sorted(getattr(self, "init_args", {}).items())},
            "extra": self.fingerprint_extra(),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def fingerprint_extra(self) -> str:
        """Extra content identity (e.g. a checksum of the weights); empty by default."""
        return ""
