"""The model registry: `@register_model` over a plain dict, `list_models(pattern)`, `build(name, **overrides)`.

An entry is a function named after the model that returns the model class and the keyword arguments that
make the model what its name says (a few lines each); `build` merges the caller's overrides into them.
Which keys may be overridden is the class's `OVERRIDES` tuple, so `build` can reject a misspelt key before
building anything. Entries live next to their classes (`resnet.py`, `transformer.py`) and register on import.
"""

from __future__ import annotations

import fnmatch
from typing import Callable

from torch import nn

EntryFn = Callable[[], tuple[type[nn.Module], dict]]

_MODELS: dict[str, EntryFn] = {}


def register_model(fn: EntryFn) -> EntryFn:
    """Register `fn` under its own name; `fn()` returns (model class, keyword arguments)."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching the fnmatch `pattern`, sorted."""
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a str (fnmatch pattern), got {type(pattern).__name__}")
    return sorted(fnmatch.filter(_MODELS, pattern))


def entry(name: str) -> tuple[type[nn.Module], dict]:
    """(class, default keyword arguments) of the model called `name`."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, the name of a registered model ({', '.join(list_models())}), "
                        f"got {type(name).__name__} {name!r}")
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    cls, kwargs = _MODELS[name]()
    return cls, dict(kwargs)


def allowed_overrides(name: str) -> tuple[str, ...]:
    """The keyword arguments `build(name, ...)` accepts."""
    return tuple(entry(name)[0].OVERRIDES)


def build(name: str, **overrides) -> nn.Module:
    """Build the registered model `name` with its defaults updated by `overrides`.

    Raises TypeError if `name` is not a str, ValueError on an unknown name (listing the known ones) or an
    override key the model does not take (naming it and the allowed ones); the model's own constructor
    validates the values.
    """
    cls, kwargs = entry(name)
    unknown = sorted(set(overrides) - set(cls.OVERRIDES))
    if unknown:
        raise ValueError(f"unknown override(s) {', '.join(map(repr, unknown))} for model {name!r}; "
                         f"allowed: {', '.join(cls.OVERRIDES)}")
    kwargs.update(overrides)
    return cls(**kwargs)
