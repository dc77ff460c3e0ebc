"""asv suite: a training step (forward, backward, SGD) of the paper's models, by registry name.

Every model behind a run of the paper (`common.MODELS`, from `common.PAPER_RUNS`: the quadratic,
generalized, many-heads, learned and learned + content self-attention classifiers) and `resnet18` (the
CIFAR ResNet18 baseline), on CIFAR-shaped batches: 2 images on CPU (so a --quick run stays short), 100 on
CUDA; float32, and bf16 autocast on CUDA. Throughput in images/s, FLOP rate (FlopCounterMode's count of
one forward + backward over the measured step time) and peak memory.
"""

from __future__ import annotations

import contextlib
import time

import torch

from impl.subnormals import subnormals_flushed

from . import common
from .layers import PRECISIONS, _check_precision


class TrainStep:
    params = (list(common.MODELS), list(common.DEVICES), list(PRECISIONS))
    param_names = ["model", "device", "precision"]
    number = 1
    repeat = (2, 5, 20.0)
    timeout = 600

    def setup(self, model, device, precision):
        self._context = contextlib.ExitStack()  # closed by teardown, which asv calls after a skip too
        _check_precision(precision, device)
        # subnormal gradients flushed, as the trainer does (impl/subnormals.py): steps on one repeated batch
        # soon hold them
        self._context.enter_context(subnormals_flushed())
        self.net = common.model(model, device)
        self.optimizer = common.sgd(self.net)
        self.images, self.labels = common.model_batch(device)
        self.precision = precision
        self.device = device

    def teardown(self, model, device, precision):
        self._context.close()

    def _step(self):
        with torch.autocast(device_type=self.device, dtype=torch.bfloat16,
                            enabled=self.precision == "bf16-autocast"):
            common.training_step(self.net, self.optimizer, self.images, self.labels)

    def time_training_step(self, model, device, precision):
        self._step()
        common.sync(device)

    def _images_per_second(self) -> float:
        steps = 1 if self.device == "cpu" else 5
        self._step()
        common.sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self._step()
        common.sync(self.device)
        return steps * self.images.shape[0] / (time.perf_counter() - start)

    def track_images_per_second(self, model, device, precision):
        return self._images_per_second()

    track_images_per_second.unit = "images/s"

    def track_gflops_per_second(self, model, device, precision):
        """FlopCounterMode's FLOPs of one forward + backward x steps/s (float32 only: autocast does not
        change the count, only the speed)."""
        flops = common.step_flops(self.net, self.images, self.labels)
        return flops * self._images_per_second() / self.images.shape[0] / 1e9

    track_gflops_per_second.unit = "GFLOP/s"

    def track_peak_memory(self, model, device, precision):
        return common.peak_memory_mib(self._step, device)

    track_peak_memory.unit = "MiB"
