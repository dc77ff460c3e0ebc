"""The paper's self-attention classifier: space-to-depth, 6 BERT post-norm layers, mean pool, linear.

    image (B, C, H, W)
      -> 2x2 space-to-depth                    (B, H/2, W/2, 4C)   every 2x2 block concatenated
      -> Linear(4C -> 400) per token            (B, h, w, 400)
      -> 6 x EncoderLayer                       (B, h, w, 400)
      -> mean over the h*w tokens, Linear(400 -> classes)

Hidden states are kept channels-last, (B, h, w, dim), so every Linear and LayerNorm acts on the last axis
directly; the attention layer takes (B, dim, h, w), a permuted *view* of the same memory, and its output is
viewed back the same way (no explicit copy: the layer's einsums take strided inputs). Each encoder layer is BERT's post-norm block:

    x = LayerNorm(x + Dropout(Linear(400 -> 400)(Attention(x))))
    x = LayerNorm(x + Dropout(Linear(512 -> 400)(GELU(Linear(400 -> 512)(x)))))

with LayerNorm eps 1e-12 and dropout 0.1 on hidden states and on attention probabilities. The attention is
`impl.attention.RelativeSelfAttention`: every head (9, or 16) averages the raw 400-channel tokens and one
Linear(heads * 400 -> 400) merges them. Linear layers keep PyTorch's default initialisation (the reference
model does not apply BERT's N(0, 0.02) init); the encodings use the paper's (see `impl.attention.encodings`).
At the paper's configuration: 12,086,844 parameters (quadratic), 12,278,682 (learned),
29,601,882 (learned + content).
"""

from __future__ import annotations

import torch
from torch import nn

from ..attention import GeneralizedEncoding, QuadraticEncoding, RelativeSelfAttention
from ..dropout import Dropout
from . import _checks
from .linear import TokenLinear
from .registry import register_model


def space_to_depth(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/f, W/f, f*f*C): each f x f block concatenated, channels-last.

    Channel order inside a token is (row in block, column in block, input channel), the reference's
    "invertible down-sampling": token[b, y, x, (i * f + j) * C + c] = image[b, c, f*y + i, f*x + j].
    `depth_to_space` is its inverse.
    """
    b, c, h, w = x.shape
    if h % factor or w % factor:
        raise ValueError(f"image size {(h, w)} must be divisible by downsample={factor}")
    x = x.reshape(b, c, h // factor, factor, w // factor, factor)  # (B, C, y, i, x, j)
    x = x.permute(0, 2, 4, 3, 5, 1)                                # (B, y, x, i, j, C)
    return x.reshape(b, h // factor, w // factor, factor * factor * c)


def depth_to_space(tokens: torch.Tensor, factor: int) -> torch.Tensor:
    """Inverse of `space_to_depth`: (B, h, w, f*f*C) -> (B, C, h*f, w*f)."""
    b, h, w, d = tokens.shape
    c = d // (factor * factor)
    x = tokens.reshape(b, h, w, factor, factor, c)  # (B, y, x, i, j, C)
    x = x.permute(0, 5, 1, 3, 2, 4)                 # (B, C, y, i, x, j)
    return x.reshape(b, c, h * factor, w * factor)


class EncoderLayer(nn.Module):
    """One BERT post-norm layer around a `RelativeSelfAttention`; input and output (B, h, w, dim)."""

    def __init__(self, *, dim: int, heads: int, mlp_dim: int, encoding: str, content: bool,
                 grid_size: tuple[int, int], dropout: float, attn_dropout: float, eps: float) -> None:
        super().__init__()
        extra = dict(grid_size=grid_size) if encoding == "learned" else {}
        self.attention = RelativeSelfAttention(dim, heads=heads, encoding=encoding, content=content,
                                               attn_dropout=attn_dropout, **extra)
        self.attention_out = TokenLinear(dim, dim)  # BERT's "self-output" dense map
        self.attention_norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(TokenLinear(dim, mlp_dim), nn.GELU(), TokenLinear(mlp_dim, dim))
        self.mlp_norm = nn.LayerNorm(dim, eps=eps)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, h, w, C) -> view (B, C, h, w) for the attention, and its output back to (B, h, w, C).
        attended = self.attention(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = self.attention_norm(x + self.dropout(self.attention_out(attended)))
        return self.mlp_norm(x + self.dropout(self.mlp(x)))


class AttentionClassifier(nn.Module):
    """The paper's self-attention image classifier (see the module docstring).

    Args:
        encoding: 'quadratic', 'generalized' or 'learned' (the positional scores of every layer).
        content: add content (query . key) scores as well.
        in_channels: input image channels.
        num_classes: outputs of the classifier.
        image_size: (H, W) or an int: the default input; the learned tables are sized for its token grid
            (image_size / downsample), so learned models take inputs up to that size. Quadratic and
            generalized models take any size divisible by `downsample`.
        downsample: space-to-depth factor f (2 in the paper; 1 keeps every pixel as a token).
        dim: token width (400).
        depth: encoder layers (6).
        heads: heads per layer (9; 16 in the many-heads run).
        mlp_dim: hidden width of each layer's MLP (512).
        dropout: dropout on hidden states (0.1).
        attn_dropout: dropout on attention probabilities (0.1), an independent mask per image.
        layer_norm_eps: LayerNorm epsilon (1e-12, BERT's).
    """

    OVERRIDES = ("in_channels", "num_classes", "image_size", "downsample", "dim", "depth", "heads",
                 "mlp_dim", "dropout", "attn_dropout")
    ENCODINGS = ("quadratic", "generalized", "learned")

    def __init__(self, *, encoding: str = "quadratic", content: bool = False, in_channels: int = 3,
                 num_classes: int = 10, image_size=(32, 32), downsample: int = 2, dim: int = 400,
                 depth: int = 6, heads: int = 9, mlp_dim: int = 512, dropout: float = 0.1,
                 attn_dropout: float = 0.1, layer_norm_eps: float = 1e-12) -> None:
        super().__init__()
        if encoding not in self.ENCODINGS:
            raise ValueError(f"encoding must be one of {self.ENCODINGS}, got {encoding!r}")
        if not isinstance(content, bool):
            raise TypeError(f"content must be a bool, got {type(content).__name__}")
        self.encoding, self.content = encoding, content
        self.in_channels = _checks.positive_int("in_channels", in_channels)
        self.num_classes = _checks.positive_int("num_classes", num_classes)
        self.image_size = _checks.image_size(image_size)
        self.downsample = _checks.positive_int("downsample", downsample)
        if any(n % downsample for n in self.image_size):
            raise ValueError(f"image_size {self.image_size} must be divisible by downsample={downsample}")
        self.grid_size = tuple(n // downsample for n in self.image_size)
        self.dim = _checks.positive_int("dim", dim)
        self.depth = _checks.positive_int("depth", depth)
        self.heads = _checks.positive_int("heads", heads)
        self.mlp_dim = _checks.positive_int("mlp_dim", mlp_dim)
        dropout = _checks.probability("dropout", dropout)
        attn_dropout = _checks.probability("attn_dropout", attn_dropout)
        if isinstance(layer_norm_eps, bool) or not isinstance(layer_norm_eps, (int, float)) \
                or not layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be a positive float, got {layer_norm_eps!r}")

        self.embed = TokenLinear(in_channels * downsample ** 2, dim)
        self.layers = nn.ModuleList(
            EncoderLayer(dim=dim, heads=heads, mlp_dim=mlp_dim, encoding=encoding, content=content,
                         grid_size=self.grid_size, dropout=dropout, attn_dropout=attn_dropout,
                         eps=float(layer_norm_eps))
            for _ in range(depth))
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _checks.image_batch(x, self.in_channels)
        tokens = self.embed(space_to_depth(x, self.downsample))  # (B, h, w, dim)
        for layer in self.layers:
            tokens = layer(tokens)
        return self.classifier(tokens.mean((1, 2)))

    def check_image_size(self, image_size) -> None:
        """Raise ValueError if images of `image_size` ((H, W) or an int) cannot go through the model: H and W
        must be divisible by `downsample`, and a learned model's token grid must fit its tables."""
        size = _checks.image_size(image_size)
        if any(n % self.downsample for n in size):
            raise ValueError(f"image size {size} must be divisible by downsample={self.downsample}")
        grid = tuple(n // self.downsample for n in size)
        if self.encoding == "learned" and any(g > m for g, m in zip(grid, self.grid_size)):
            raise ValueError(f"image size {size} gives a {grid[0]}x{grid[1]} token grid, larger than the "
                             f"{self.grid_size[0]}x{self.grid_size[1]} grid the learned encoding was built for "
                             f"(image_size={self.image_size}, downsample={self.downsample})")

    def attention_layers(self) -> list[RelativeSelfAttention]:
        """The attention layer of every encoder layer, first to last."""
        return [layer.attention for layer in self.layers]

    def no_weight_decay(self) -> list[str]:
        """Parameter names excluded from weight decay: the quadratic heads' centres and widths (the paper),
        and the generalized heads' centres and scale matrices S (their widths)."""
        names = []
        for module_name, module in self.named_modules():
            if isinstance(module, (QuadraticEncoding, GeneralizedEncoding)):
                names += [f"{module_name}.{name}" for name, _ in module.named_parameters(recurse=False)]
        return names

    def extra_repr(self) -> str:
        return (f"encoding={self.encoding}, content={self.content}, image_size={self.image_size}, "
                f"downsample={self.downsample}, dim={self.dim}, depth={self.depth}, heads={self.heads}, "
                f"mlp_dim={self.mlp_dim}")


# -- registry entries ------------------------------------------------------------------------------------
TINY = dict(dim=64, depth=2, mlp_dim=128)


@register_model
def sa_quadratic():
    """The paper's model with 9 isotropic quadratic heads per layer (12.1M parameters)."""
    return AttentionClassifier, dict(encoding="quadratic")


@register_model
def sa_generalized():
    """9 generalized quadratic heads (a learned Sigma^-1 per head)."""
    return AttentionClassifier, dict(encoding="generalized")


@register_model
def sa_learned():
    """Learned relative row + column embeddings, no content (12.3M parameters)."""
    return AttentionClassifier, dict(encoding="learned")


@register_model
def sa_learned_content():
    """Learned relative embeddings plus content scores (29.6M parameters)."""
    return AttentionClassifier, dict(encoding="learned", content=True)


@register_model
def sa_many_heads():
    """16 isotropic quadratic heads per layer."""
    return AttentionClassifier, dict(encoding="quadratic", heads=16)


@register_model
def tiny_quadratic():
    """sa_quadratic at width 64, 2 layers, MLP 128, for CPU demos."""
    return AttentionClassifier, dict(encoding="quadratic", **TINY)


@register_model
def tiny_generalized():
    """sa_generalized at width 64, 2 layers, MLP 128."""
    return AttentionClassifier, dict(encoding="generalized", **TINY)


@register_model
def tiny_learned():
    """sa_learned at width 64, 2 layers, MLP 128."""
    return AttentionClassifier, dict(encoding="learned", **TINY)


@register_model
def tiny_learned_content():
    """sa_learned_content at width 64, 2 layers, MLP 128."""
    return AttentionClassifier, dict(encoding="learned", content=True, **TINY)


@register_model
def tiny_many_heads():
    """sa_many_heads (16 heads) at width 64, 2 layers, MLP 128."""
    return AttentionClassifier, dict(encoding="quadratic", heads=16, **TINY)
