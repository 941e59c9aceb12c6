"""Built-in adapters; importing this package registers them."""

from adapters import baselines  # noqa: F401
from adapters.gpt4roi import adapter as gpt4roi_adapter  # noqa: F401
from adapters.rgpt import adapter as rgpt_adapter  # noqa: F401
