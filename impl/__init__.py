"""attention-cnn in PyTorch: the attention layer, the conv <-> attention converter, models, data, trainer."""
