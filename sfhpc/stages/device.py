"""How the stages use their device, in one place: the memory layout, cudnn's autotuner, and batches prepared ahead of
the step. (Which device a rank uses, and the process group, are sfhpc.distributed's; bf16 autocast is the stages'
`precision`, sfhpc.stages.common.autocast.)

On CUDA a stage runs the way a GPU's owners would run it: cudnn.benchmark picks the fastest convolution kernels for
the shapes it sees; images and convolution weights are channels_last (NHWC, what tensor cores want); a loader thread
gathers the next batches from the (memory-mapped) uint8 image array into pinned memory while the GPU computes, and
they are copied without blocking the host, as uint8 (a quarter of float32's bytes), then converted on the GPU.

On CPUs every choice is the plain one by default: contiguous tensors, each batch gathered when the step needs it, no
pinning, no autotuner. The batches, their order and every number computed are those of the plain loop; a loader
thread on a CPU (prefetch_batches > 0) gives the same numbers too (tests pin both).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from sfhpc import distributed
from sfhpc.config import MemoryFormat, Prefetch

CUDA_PREFETCH = 2  # batches a loader thread keeps ready on CUDA (prefetch auto): one in use, one or two in waiting
POLL_S = 0.1  # how often a loader thread that waits for room checks whether its consumer has stopped

T = TypeVar("T")
R = TypeVar("R")
M = TypeVar("M", bound=nn.Module)


@dataclass(frozen=True)
class DevicePlan:
    """How a stage uses `device`: channels_last or contiguous, batches prepared `prefetch` ahead by a loader thread
    (0: none), pinned host memory (and with it non-blocking copies), cudnn.benchmark."""

    device: torch.device
    channels_last: bool = False
    prefetch: int = 0
    pin_memory: bool = False
    cudnn_benchmark: bool = False

    @property
    def non_blocking(self) -> bool:
        """A copy from pinned memory can return before it is done; from pageable memory it cannot."""
        return self.pin_memory

    def attrs(self) -> dict[str, Any]:
        """What a result records of how its point used the device."""
        return {"device": str(self.device), "memory_format": "channels_last" if self.channels_last else "contiguous",
                "prefetch_batches": self.prefetch, "pin_memory": self.pin_memory,
                "cudnn_benchmark": self.cudnn_benchmark}

    def layout(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch of images (B, C, H, W) in the plan's memory layout (the same values)."""
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch


def plan_for(device: torch.device, memory_format: MemoryFormat = "auto", prefetch: Prefetch = "auto") -> DevicePlan:
    """The plan for `device` and a stage's settings: `auto` resolves to the GPU choices on CUDA and to the plain
    ones elsewhere."""
    cuda = device.type == "cuda"
    channels_last = memory_format == "channels_last" or (memory_format == "auto" and cuda)
    ahead = (CUDA_PREFETCH if cuda else 0) if prefetch == "auto" else prefetch
    return DevicePlan(device, channels_last=channels_last, prefetch=ahead, pin_memory=cuda, cudnn_benchmark=cuda)


def evaluation_plan(memory_format: MemoryFormat = "auto") -> DevicePlan:
    """The plan of a stage that evaluates a model in one process (cbm, rsa, attack): the node's first GPU, else the
    CPU, with `memory_format` (the trained model's), and cudnn set up for it."""
    plan = plan_for(distributed.setup(distributed.single()), memory_format)
    use_plan(plan)
    return plan


def use_plan(plan: DevicePlan) -> None:
    """Process-wide settings of the plan: cudnn's autotuner on CUDA (left as it is elsewhere)."""
    if plan.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True


def place_model(model: M, plan: DevicePlan) -> M:
    """`model` moved to the plan's device, its convolution weights in the plan's layout (in place; returns it)."""
    model.to(plan.device)
    if plan.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


# ------------------------------------------------------------------------------------------ batches
def chunks(n: int, size: int) -> list[torch.Tensor]:
    """Indices 0 .. n - 1 in consecutive batches of `size` (the last one shorter)."""
    return [torch.arange(start, min(start + size, n)) for start in range(0, n, size)]


def image_batches(images: np.ndarray, batches: Iterable[torch.Tensor], plan: DevicePlan,
                  *rows: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
    """For each index tensor of `batches`, in order: the images at it (uint8, N x C x H x W, memory-mapped or not)
    as floats in [0, 1] on the plan's device (contiguous: augmentation comes first, `plan.layout` after it), then
    the same rows of each tensor of `rows` (labels, targets) there. The gathering runs `plan.prefetch` batches ahead
    in a loader thread, into pinned memory when the plan pins."""

    def gather(index: torch.Tensor) -> list[torch.Tensor]:
        host = [torch.from_numpy(images[index.numpy()]), *(tensor[index] for tensor in rows)]
        return [tensor.pin_memory() for tensor in host] if plan.pin_memory else host

    for host in prefetched(batches, gather, plan.prefetch):
        pixels, *others = (tensor.to(plan.device, non_blocking=plan.non_blocking) for tensor in host)
        yield (pixels.float().div_(255.0), *others)


def prefetched(items: Iterable[T], prepare: Callable[[T], R], depth: int) -> Iterator[R]:
    """prepare(item) for each item, in order. With `depth` > 0 one loader thread prepares them, up to `depth` ready
    ahead of the consumer (one thread: whatever `prepare` draws or reads happens in the items' order). An error in
    `prepare` is raised in the consumer; a consumer that stops early stops the thread."""
    if depth == 0:
        yield from map(prepare, items)
        return
    ready: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(message: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                ready.put(message, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not offer(("item", prepare(item))):
                    return
        except BaseException as err:  # handed to the consumer, which raises it with its traceback
            offer(("error", err))
            return
        offer(("done", None))

    thread = threading.Thread(target=work, name="sfhpc-loader", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = ready.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join()

