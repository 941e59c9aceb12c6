"""Capabilities.adapt: every task hands regions to models through it."""

import pytest

from bench.adapter import Capabilities
from bench.errors import ConfigError
from bench.regions import Region

POLYGON = [[1.0, 1.0, 5.0, 1.0, 5.0, 5.0]]
BOTH = Region(box=(1.0, 1.0, 5.0, 5.0), mask=POLYGON)
BOX = Region(box=(2.0, 2.0, 8.0, 9.0))


def test_box_only_model_gets_boxes_without_masks() -> None:
    assert Capabilities(boxes=True, masks=False).adapt([BOTH, BOX]) == (Region(box=BOTH.box), BOX)


def test_mask_model_gets_box_and_mask() -> None:
    assert Capabilities(boxes=True, masks=True).adapt([BOTH, BOX]) == (BOTH, BOX)


def test_mask_only_model_gets_boxes_as_rectangles() -> None:
    adapted = Capabilities(boxes=False, masks=True).adapt([BOTH, BOX])
    assert adapted[0] == BOTH
    assert adapted[1] == Region(box=BOX.box, mask=[[2.0, 2.0, 8.0, 2.0, 8.0, 9.0, 2.0, 9.0]])


def test_limits_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="neither boxes nor masks"):
        Capabilities(boxes=False, masks=False).adapt([BOX])
    with pytest.raises(ConfigError, match="3 regions in one query, but the model takes at most 2"):
        Capabilities(max_regions=2).adapt([BOX, BOX, BOX])
