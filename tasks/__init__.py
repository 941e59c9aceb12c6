"""Built-in tasks; importing this package registers them."""

from tasks import captioning, coco_cls, pope, rec  # noqa: F401
