"""asv suite: one attention layer of the paper's shape against the 3x3 convolution it replaces.

Ids (common.LAYER_PATHS): `conv` (nn.Conv2d(400, 400, 3, padding=1)), `separable-quadratic` (that conv
converted at alpha = 4: separable quadratic heads), `fixed-encoding` (the same, its encoding frozen: no
gradients for the probabilities), `trained-quadratic` (the same once training has moved each head's
centre: its heads no longer share their per-axis matrices), `hard-limit` (converted at alpha = inf: shifts),
`generalized-encoding` (dense positional matrix), `learned`, `learned-content` (SDPA / FlexAttention with
the positional bias), `dense-reference` and `content-reference` (the separable-quadratic and the
learned-content layers computed plainly). Batch 16 on CPU,
100 on CUDA; 16x16 and 32x32 tokens; float32 (`Layer`), and bf16 autocast on CUDA (`LayerBF16`).
"""

from __future__ import annotations

import statistics
import time

import torch

from . import common

PRECISIONS = ("float32", "bf16-autocast")


def _check_precision(precision: str, device: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16-autocast" and device != "cuda":
        raise NotImplementedError("bf16 autocast is benchmarked on CUDA only")


class Layer:
    """Forward (inference: eval mode, no_grad) and forward + backward (training mode) of one layer, float32."""

    params = (list(common.LAYER_PATHS), list(common.SIZES), list(common.DEVICES))
    param_names = ["path", "size", "device"]
    number = 1
    repeat = (2, 5, 10.0)
    timeout = 300
    precision = "float32"

    def setup(self, path, size, device):
        _check_precision(self.precision, device)
        if device == "cpu" and size > min(common.SIZES) and path in common.CPU_SMALL_ONLY:
            raise NotImplementedError(f"{path} (dense N^2 attention) runs at {min(common.SIZES)}x"
                                      f"{min(common.SIZES)} only on CPU")
        self.module = common.layer(path, size, device)
        self.x = common.layer_input(size, device, requires_grad=True)

    def _autocast(self, device):
        return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=self.precision != "float32")

    def time_forward(self, path, size, device):
        self.module.eval()
        with torch.no_grad(), self._autocast(device):
            self.module(self.x)
        common.sync(device)
        self.module.train()

    def time_forward_backward(self, path, size, device):
        with self._autocast(device):
            out = self.module(self.x)
        out.float().sum().backward()
        common.sync(device)

    def track_peak_memory(self, path, size, device):
        """Peak memory one forward + backward adds (host RSS on CPU, max_memory_allocated on CUDA)."""
        return common.peak_memory_mib(lambda: self.time_forward_backward(path, size, device), device)

    track_peak_memory.unit = "MiB"


class LayerBF16(Layer):
    """The same under bf16 autocast (CUDA only: the issue's GPU target is bf16, batch 100)."""

    precision = "bf16-autocast"


class LayerRatio:
    """Forward + backward time of a layer over the convolution's, the two timed alternately in one process
    (median of 2 each): the issue's target is <= 1.3 for `separable-quadratic`. `python -m bench.ratios`
    does the same with more rounds and prints a table. `make bench` records it with --launch-method spawn:
    in a child of asv's fork server it reads 0.02-0.05 higher on 2 cores (asv.conf.json)."""

    params = (["separable-quadratic", "fixed-encoding", "trained-quadratic", "hard-limit", "dense-reference"],
              list(common.SIZES), list(common.DEVICES))
    param_names = ["path", "size", "device"]
    number = 1
    repeat = 1
    timeout = 600
    rounds = 2

    def setup(self, path, size, device):
        if device == "cpu" and size > min(common.SIZES) and path in common.CPU_SMALL_ONLY:
            raise NotImplementedError(f"{path} (dense N^2 attention) runs at {min(common.SIZES)}x"
                                      f"{min(common.SIZES)} only on CPU (test_ratios times it at 32x32)")
        self.conv = common.layer("conv", size, device)
        self.module = common.layer(path, size, device)
        self.x = common.layer_input(size, device, requires_grad=True)

    def _time(self, module, device) -> float:
        common.sync(device)
        start = time.perf_counter()
        common.forward_backward(module, self.x)
        common.sync(device)
        return time.perf_counter() - start

    def track_ratio_to_conv(self, path, size, device):
        common.forward_backward(self.conv, self.x)
        common.forward_backward(self.module, self.x)
        conv, ours = [], []
        for _ in range(self.rounds):
            conv.append(self._time(self.conv, device))
            ours.append(self._time(self.module, device))
        return statistics.median(ours) / statistics.median(conv)

    track_ratio_to_conv.unit = "x conv"
