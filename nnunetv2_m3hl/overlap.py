"""Pseudo-label cleanup (largest connected component per class) overlapped with the student's forward pass.

The student's forward needs only the mixed images; the pseudo-labels are needed first by the mixed targets of
the loss. So the cleanup can run while the student computes:

- ``sync``: clean now, in the calling thread (no overlap);
- ``side_stream``: the torch cleanup in a worker thread on a side CUDA stream, ordered after the teacher's argmax
  by an event; the main stream waits for it before the loss (CUDA only);
- ``host_thread``: the argmax map (uint8) goes to the host and scipy cleans it in worker threads, one sample
  per thread (scipy releases the GIL while it labels, so the main thread keeps launching the student's
  kernels); the result comes back to the device before the loss.

Every mode keeps exactly the voxels ``largest_component_per_class`` keeps (tests compare them bit for bit).
"""
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Optional

import torch

from nnunetv2_m3hl.teacher import largest_component_per_class, largest_component_per_class_numpy

CLEANUP_MODES = ('sync', 'side_stream', 'host_thread')


def host_cleanup_threads() -> int:
    """Threads of the host cleanup: half the cores (the data loaders need the rest), at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


class _Done:
    def __init__(self, value: torch.Tensor):
        self.value = value

    def result(self) -> torch.Tensor:
        return self.value


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

    def start(self, hard: torch.Tensor, num_classes: int):
        """``hard``: the teacher's argmax; returns an object whose ``result()`` is the cleaned map on its device."""
        mode = self.mode
        if mode == 'side_stream' and hard.device.type != 'cuda':
            mode = 'sync'
        if mode == 'sync':
            return _Done(largest_component_per_class(hard, num_classes))
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
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=hard.device)
        produced = torch.cuda.Event()
        produced.record()
        stream = self._stream

        def clean_on_side_stream() -> torch.Tensor:
            with torch.no_grad(), torch.cuda.stream(stream):
                stream.wait_event(produced)
                return largest_component_per_class(hard, num_classes, backend='torch')
        return _StreamResult(self._worker().submit(clean_on_side_stream), stream, hard)

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
    def __init__(self, future: Future, stream, source: torch.Tensor):
        self.future, self.stream, self.source = future, stream, source

    def result(self) -> torch.Tensor:
        cleaned = self.future.result()
        current = torch.cuda.current_stream(cleaned.device)
        current.wait_stream(self.stream)
        # the tensors made on the side stream are used on the main one from here on
        cleaned.record_stream(current)
        return cleaned
