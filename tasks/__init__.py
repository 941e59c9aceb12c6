"""Built-in tasks; importing this package registers them."""

from tasks import pope  # noqa: F401
