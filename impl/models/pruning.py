"""Pruning degenerate quadratic heads, from outside the attention layer.

The paper's rule (its reference code): an isotropic head is degenerate when its width s has s^2 < 1e-5
(alpha = s^2 / 2 ~ 0: the head attends uniformly to every token); a generalized head when its precision
Sigma^-1 = S S^T has condition number above 1000 (it attends along a line) or largest eigenvalue below 1e-5
(it attends everywhere). Eigenvalues come from `torch.linalg.eigvalsh` (the reference's `torch.symeig` is
gone from PyTorch).

Removing head h of a `RelativeSelfAttention` removes its encoding parameters, its column block
merge.weight[:, h*dim:(h+1)*dim] and, in a content layer, its rows of the query and key maps. The pruned
layer computes exactly what the original computes with those merge blocks zeroed. Pruning replaces
parameters: build the optimizer after pruning.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from ..attention import GeneralizedEncoding, QuadraticEncoding, RelativeSelfAttention

WIDTH_SQ_MIN = 1e-5        # isotropic: prune if s^2 < this
CONDITION_MAX = 1000.0     # generalized: prune if cond(Sigma^-1) > this ...
EIGENVALUE_MIN = 1e-5      # ... or if its largest eigenvalue < this


def named_attention_layers(model: nn.Module) -> list[tuple[str, RelativeSelfAttention]]:
    """(qualified name, layer) for every `RelativeSelfAttention` inside `model`, in module order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, RelativeSelfAttention)]


def degenerate_heads(layer: RelativeSelfAttention) -> list[int]:
    """Indices of the heads of `layer` the paper's rule prunes (none for learned or hard-limit heads)."""
    if not isinstance(layer, RelativeSelfAttention):
        raise TypeError(f"layer must be a RelativeSelfAttention, got {type(layer).__name__}")
    encoding = layer.encoding
    with torch.no_grad():
        if isinstance(encoding, QuadraticEncoding) and encoding.width is not None:
            bad = encoding.width.double().square() < WIDTH_SQ_MIN
        elif isinstance(encoding, GeneralizedEncoding):
            eig = torch.linalg.eigvalsh(encoding.precision.double())  # ascending, (heads, n)
            smallest, largest = eig[:, 0], eig[:, -1]
            # cond > C  <=>  largest > C * smallest (also when smallest <= 0: cond is infinite)
            bad = (largest > CONDITION_MAX * smallest) | (largest < EIGENVALUE_MIN)
        else:
            return []
    return [int(h) for h in torch.nonzero(bad).flatten()]


def _keep(parameter: torch.Tensor | None, index: torch.Tensor, dim: int = 0) -> nn.Parameter | None:
    if parameter is None:
        return None
    kept = parameter.detach().index_select(dim, index.to(parameter.device)).clone()
    return nn.Parameter(kept, requires_grad=parameter.requires_grad)


def remove_heads(layer: RelativeSelfAttention, heads: Sequence[int]) -> None:
    """Remove `heads` (indices) from `layer` in place."""
    if not isinstance(layer, RelativeSelfAttention):
        raise TypeError(f"layer must be a RelativeSelfAttention, got {type(layer).__name__}")
    drop = sorted(set(int(h) for h in heads))
    if any(not 0 <= h < layer.heads for h in drop):
        raise ValueError(f"heads must be indices in [0, {layer.heads}), got {list(heads)!r}")
    if not drop:
        return
    if len(drop) == layer.heads:
        raise ValueError(f"cannot remove all {layer.heads} heads of a layer: it would attend to nothing")
    keep = torch.tensor([h for h in range(layer.heads) if h not in drop])
    encoding = layer.encoding
    if encoding is not None:
        if not isinstance(encoding, (QuadraticEncoding, GeneralizedEncoding)):
            raise ValueError(f"removing heads is implemented for quadratic and generalized encodings, "
                             f"not {type(encoding).__name__}")
        for name, parameter in list(encoding.named_parameters(recurse=False)):
            setattr(encoding, name, _keep(parameter, keep))
        encoding.heads = len(keep)

    def channel_blocks(width: int) -> torch.Tensor:  # the channels of the kept heads, head-major
        return (keep[:, None] * width + torch.arange(width)[None]).flatten()

    merge_columns = channel_blocks(layer.dim)
    new_merge = nn.Linear(len(merge_columns), layer.out_dim, bias=layer.merge.bias is not None,
                          device=layer.merge.weight.device, dtype=layer.merge.weight.dtype)
    new_merge.weight = _keep(layer.merge.weight, merge_columns, dim=1)
    if layer.merge.bias is not None:
        new_merge.bias = nn.Parameter(layer.merge.bias.detach().clone())
    layer.merge = new_merge
    if layer.content:
        rows = channel_blocks(layer.content_dim)
        for name in ("query", "key"):
            old = getattr(layer, name)
            new = nn.Linear(old.in_features, len(rows), device=old.weight.device, dtype=old.weight.dtype)
            new.weight, new.bias = _keep(old.weight, rows), _keep(old.bias, rows)
            setattr(layer, name, new)
    layer.heads = len(keep)
    # The layer caches its positional attention keyed by parameter versions; fresh parameters restart at
    # version 0, so the key could collide with the old one: drop the cache.
    layer._cache = None


def prune_degenerate_heads(model: nn.Module) -> list[tuple[str, list[int]]]:
    """Remove every degenerate head (the paper's rule) from every attention layer of `model`, in place.

    Returns (layer name, removed head indices, as they were numbered before pruning) for every attention
    layer, with an empty list where nothing was removed. Raises ValueError, before changing anything, when
    every head of some layer is degenerate (a layer without heads would attend to nothing).
    """
    plan = [(name, layer, degenerate_heads(layer)) for name, layer in named_attention_layers(model)]
    for name, layer, heads in plan:
        if heads and len(heads) == layer.heads:
            raise ValueError(f"every head of layer {name!r} is degenerate; refusing to remove them all")
    for _, layer, heads in plan:
        remove_heads(layer, heads)
    return [(name, heads) for name, _, heads in plan]


def match_heads(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[tuple[str, int]]:
    """Shrink each attention layer of `model` to the head count found in `state_dict`, to load a pruned
    checkpoint into a freshly built model: the last heads are removed (every parameter is then overwritten by
    `model.load_state_dict(state_dict)`, so which ones does not matter). Returns (layer name, heads)."""
    result = []
    for name, layer in named_attention_layers(model):
        key = f"{name}.merge.weight"
        if key not in state_dict:
            raise ValueError(f"state_dict has no {key!r}: not a checkpoint of this model")
        columns = state_dict[key].shape[1]
        if columns % layer.dim or not 0 < columns // layer.dim <= layer.heads:
            raise ValueError(f"{key} has {columns} columns: not a multiple of dim={layer.dim} "
                             f"with at most {layer.heads} heads")
        remove_heads(layer, range(columns // layer.dim, layer.heads))
        result.append((name, layer.heads))
    return result
