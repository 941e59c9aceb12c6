"""``bench inspect``: a model's architecture without its weights.

The adapter builds its network on PyTorch's ``meta`` device (shapes only: no
weights are read and no memory is allocated), so even a 7B model is inspected
in seconds on any machine. An adapter opts in with a ``meta_model(**model_args)``
classmethod returning an ``nn.Module``; a module with a ``components()`` method
gets per-component parameter counts, otherwise its top-level children are used.
"""

from __future__ import annotations

from typing import Any

from bench import registry
from bench.errors import ConfigError


def inspect_model(adapter_name: str, model_args: dict[str, Any]) -> str:
    """A report: compact module tree, parameter counts per component (trainable / frozen), state_dict keys."""
    cls = registry.get_adapter(adapter_name)
    builder = getattr(cls, "meta_model", None)
    if builder is None:
        raise ConfigError(f"model {adapter_name!r} has no network to inspect (no meta_model)")
    unknown = sorted(set(model_args) - set(registry._options(cls, exclude=())))
    if unknown:
        raise ConfigError(f"model {adapter_name!r} does not take --model-args {', '.join(unknown)}")
    converted = registry._converted(cls, {k: v for k, v in model_args.items() if isinstance(v, str)}, "--model-args")
    converted.update({k: v for k, v in model_args.items() if not isinstance(v, str)})
    model = builder(**converted)
    lines = [f"model {adapter_name} ({', '.join(f'{k}={v}' for k, v in model_args.items()) or 'defaults'}), "
             "built on the meta device", "", "## modules", module_tree(model), "", "## parameters"]
    lines += parameter_table(model)
    lines += ["", "## state_dict"]
    lines += [f"{key}  {list(value.shape)}  {str(value.dtype).removeprefix('torch.')}"
              for key, value in model.state_dict().items()]
    return "\n".join(lines)


def parameter_table(model: Any) -> list[str]:
    parts = model.components() if hasattr(model, "components") else dict(model.named_children())
    rows = [("component", "total", "trainable", "frozen")]
    totals = [0, 0, 0]
    for name, module in parts.items():
        total = sum(p.numel() for p in module.parameters())
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        rows.append((name, _count(total), _count(trainable), _count(total - trainable)))
        totals = [totals[0] + total, totals[1] + trainable, totals[2] + total - trainable]
    rows.append(("total", *(_count(t) for t in totals)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                      for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
            for row in rows]


def _count(n: int) -> str:
    if n >= 1e9:
        return f"{n:,} ({n / 1e9:.2f}B)"
    if n >= 1e6:
        return f"{n:,} ({n / 1e6:.1f}M)"
    return f"{n:,}"


def module_tree(module: Any, name: str = "", depth: int = 0, max_depth: int = 6) -> str:
    """``repr``-like tree where a list of identical blocks shows its first block once, with a count."""
    own = sum(p.numel() for p in module.parameters())
    head = f"{'  ' * depth}{name + ': ' if name else ''}{type(module).__name__}{_leaf(module)}  [{_count(own)}]"
    children = list(module.named_children())
    if not children or depth >= max_depth:
        return head
    lines = [head]
    import torch.nn as nn

    if isinstance(module, nn.ModuleList) and len(children) > 1 and \
            len({_signature(c) for _, c in children}) == 1:
        lines.append(module_tree(children[0][1], f"0..{len(children) - 1} ({len(children)}x)", depth + 1, max_depth))
        return "\n".join(lines)
    lines += [module_tree(child, child_name, depth + 1, max_depth) for child_name, child in children]
    return "\n".join(lines)


def _leaf(module: Any) -> str:
    if list(module.children()):
        return ""
    extra = module.extra_repr()
    return f"({extra})" if extra else ""


def _signature(module: Any) -> tuple[Any, ...]:
    return (type(module).__name__, tuple((k, tuple(v.shape)) for k, v in module.state_dict().items()))
