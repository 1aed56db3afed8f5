"""Pseudo-label cleanup (largest connected component per class) overlapped with the student's forward pass.

The student's forward needs only the mixed images; the pseudo-labels are needed first by the mixed targets of
the loss. So the cleanup can run while the student computes:

- ``sync``: clean now, in the calling thread (no overlap);
- ``side_stream``: the torch cleanup in a worker thread on a side CUDA stream, ordered after the teacher's argmax
  by an event; the main stream waits for it before the loss (CUDA only);
- ``host_thread``: the argmax map (uint8) goes to the host and scipy cleans it in worker threads, one sample
  per thread (scipy releases the GIL while it labels, so the main thread keeps launching the student's
  kernels); the result comes back to the device before the loss;
- ``teacher_side_stream``: the teacher's forward needs only the unlabeled patches, so it moves to the side
  stream too, with its pseudo-labels and their cleanup: the teacher's and the student's forward passes run
  at the same time (CUDA only; elsewhere the same as ``sync``).

Every mode keeps exactly the voxels ``largest_component_per_class`` keeps (tests compare them bit for bit), and
every mode gives the same teacher outputs.
"""
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Optional, Tuple

import torch

from nnunetv2_m3hl.teacher import largest_component_per_class, largest_component_per_class_numpy

CLEANUP_MODES = ('sync', 'side_stream', 'host_thread', 'teacher_side_stream')


def host_cleanup_threads() -> int:
    """Threads of the host cleanup: half the cores (the data loaders need the rest), at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


class Ready:
    """A result that is already there (the same ``result()`` as a started cleanup)."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


class _TeacherOutputs:
    """The teacher pass run in the calling thread; its cleanup, if still running, is waited for on ``result()``."""

    def __init__(self, cleaning, high: torch.Tensor, low: torch.Tensor):
        self.cleaning, self.high, self.low = cleaning, high, low

    def result(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.cleaning.result(), self.high, self.low


class PseudoLabelCleanup:
    """Starts the cleanup of a hard label map ``(B, *spatial)`` and hands the cleaned map back on ``result()``."""

    def __init__(self, mode: str = 'sync'):
        if mode not in CLEANUP_MODES:
            raise ValueError(f"cleanup mode must be one of {CLEANUP_MODES}, got {mode!r}")
        self.mode = mode
        self._pool: Optional[ThreadPoolExecutor] = None
        self._sample_pool: Optional[ThreadPoolExecutor] = None
        self._stream = None

    def _worker(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix='m3hl-cleanup')
        return self._pool

    def _sample_workers(self) -> ThreadPoolExecutor:
        if self._sample_pool is None:
            self._sample_pool = ThreadPoolExecutor(max_workers=host_cleanup_threads(),
                                                   thread_name_prefix='m3hl-cleanup-sample')
        return self._sample_pool

    def run_teacher(self, teacher_pass: Callable, device: torch.device):
        """``teacher_pass()`` returns (the handle of a started cleanup, the teacher's bottleneck and last decoder
        features). Returns an object whose ``result()`` is (the cleaned pseudo-labels, the two feature maps): with
        ``teacher_side_stream`` on CUDA the whole pass runs on the side stream, else in the calling thread now."""
        if self.mode != 'teacher_side_stream' or device.type != 'cuda':
            return _TeacherOutputs(*teacher_pass())

        def whole_pass():
            cleaning, high, low = teacher_pass()
            return cleaning.result(), high, low
        return self._on_side_stream(whole_pass, device)

    def _on_side_stream(self, fn: Callable, device: torch.device) -> '_StreamResult':
        """``fn()`` in the worker thread on the side stream, after everything queued on the current stream so far."""
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=device)
        produced = torch.cuda.Event()
        produced.record()
        stream = self._stream

        def on_side_stream():
            # grad mode is thread-local: the worker must not record a graph for the teacher's tensors
            with torch.no_grad(), torch.cuda.stream(stream):
                stream.wait_event(produced)
                return fn()
        return _StreamResult(self._worker().submit(on_side_stream), stream)

    def start(self, hard: torch.Tensor, num_classes: int):
        """``hard``: the teacher's argmax; returns an object whose ``result()`` is the cleaned map on its device."""
        mode = self.mode
        if mode == 'teacher_side_stream' or (mode == 'side_stream' and hard.device.type != 'cuda'):
            mode = 'sync'  # in that mode the whole teacher pass, this cleanup included, is already on the side stream
        if mode == 'sync':
            return Ready(largest_component_per_class(hard, num_classes))
        if mode == 'host_thread':
            device, dtype = hard.device, hard.dtype
            small = hard.to(torch.uint8) if num_classes <= 256 else hard
            host = small.to('cpu', non_blocking=hard.device.type == 'cuda')
            ready = torch.cuda.Event() if hard.device.type == 'cuda' else None
            if ready is not None:
                ready.record()

            samples = self._sample_workers()

            def clean_on_host() -> torch.Tensor:
                if ready is not None:
                    ready.synchronize()
                return torch.from_numpy(largest_component_per_class_numpy(host.numpy(), num_classes, samples))
            return _HostResult(self._worker().submit(clean_on_host), device, dtype)
        # side_stream
        return self._on_side_stream(lambda: largest_component_per_class(hard, num_classes, backend='torch'),
                                    hard.device)

    def close(self) -> None:
        for pool in (self._pool, self._sample_pool):
            if pool is not None:
                pool.shutdown(wait=True)
        self._pool = self._sample_pool = None


class _HostResult:
    def __init__(self, future: Future, device: torch.device, dtype: torch.dtype):
        self.future, self.device, self.dtype = future, device, dtype

    def result(self) -> torch.Tensor:
        return self.future.result().to(self.device, self.dtype, non_blocking=True)


class _StreamResult:
    def __init__(self, future: Future, stream):
        self.future, self.stream = future, stream

    def result(self):
        """What the side-stream job returned (a tensor or a tuple of tensors), ready for the current stream."""
        value = self.future.result()
        tensors = value if isinstance(value, tuple) else (value,)
        current = torch.cuda.current_stream(self.stream.device)
        current.wait_stream(self.stream)
        for tensor in tensors:
            # made on the side stream, used on the main one from here on
            tensor.record_stream(current)
        return value
