"""Models: the paper's self-attention classifiers and the ResNet18 baseline, built by name.

    from impl.models import build, list_models
    model = build("sa_quadratic")                                  # the paper's configuration
    model = build("tiny_learned", in_channels=1, image_size=8, downsample=1)
"""

from . import pruning
from .registry import allowed_overrides, build, list_models, register_model
from .resnet import BasicBlock, ResNet
from .transformer import AttentionClassifier, EncoderLayer, depth_to_space, space_to_depth

__all__ = ["AttentionClassifier", "BasicBlock", "EncoderLayer", "ResNet", "allowed_overrides", "build",
           "depth_to_space", "list_models", "pruning", "register_model", "space_to_depth"]
