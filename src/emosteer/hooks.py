"""The one place that registers hooks: run a function on a module's output (or input) in a block.

Capture, steering, per-row steering, circuit reading and circuit edits are all "run this
function on that module's output inside a `with` block". `hooked` registers the functions,
always removes exactly the handles it took (errors included), and never touches the hooks
others registered: transformers 5 keeps its own in `module._forward_hooks`.

Decoder layers may return a tensor or a tuple whose first item is the hidden states:
`untuple` and `retuple` hide the difference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeAlias

import torch

# fn(module, args, output) -> new output or None (forward hook), or
# fn(module, args) -> new args or None (forward pre-hook)
HookFn: TypeAlias = Callable[..., Any]


def untuple(output: Any) -> torch.Tensor:
    """The hidden states of a module output: a tensor, or the first item of a tuple."""
    return output[0] if isinstance(output, tuple) else output


def retuple(output: Any, hidden: torch.Tensor) -> Any:
    """`output` with its hidden states replaced by `hidden`, in the same structure."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextmanager
def hooked(model: torch.nn.Module | None,
           hooks: Mapping[Any, HookFn] | Iterable[tuple[Any, HookFn]],
           pre: bool = False) -> Iterator[None]:
    """Run each function on its module's output (pre=True: its input) inside the block.

    Args:
        model: the model that dotted module names are looked up in (may be None when every
            target is a module).
        hooks: {module or dotted name: fn}, or (module, fn) pairs when one module takes
            several functions. A forward hook is fn(module, args, output) and may return a
            new output; a pre-hook (pre=True) is fn(module, args) and may return new args.
        pre: register forward pre-hooks instead of forward hooks.

    Example:
        with hooked(model, {"model.layers.0": lambda m, a, out: print(untuple(out).shape)}):
            model(ids)
    """
    pairs = hooks.items() if isinstance(hooks, Mapping) else hooks
    handles = []
    try:
        for target, fn in pairs:
            if isinstance(target, str):
                if model is None:
                    raise TypeError(f"hook target {target!r} is a name: pass the model too")
                target = model.get_submodule(target)
            module = target
            register = module.register_forward_pre_hook if pre else module.register_forward_hook
            handles.append(register(fn))
        yield
    finally:
        for handle in handles:
            handle.remove()
