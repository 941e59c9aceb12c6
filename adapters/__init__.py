"""Built-in adapters; importing this package registers them."""

from adapters import baselines  # noqa: F401
