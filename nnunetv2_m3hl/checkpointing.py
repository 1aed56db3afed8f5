"""Atomic checkpoint writes and safe checkpoint reads."""
import os
from typing import Any

import numpy as np
import torch


def save_atomically(obj: Any, filename: str) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: a crash mid-write leaves the
    previous file intact."""
    tmp = f"{filename}.tmp-{os.getpid()}"
    try:
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filename)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _numpy_globals() -> list:
    """The numpy types nnU-Net puts in its checkpoints (logged scalars and arrays)."""
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    dtypes = [type(np.dtype(t)) for t in ('float64', 'float32', 'float16', 'int64', 'int32', 'int16', 'int8',
                                          'uint8', 'bool')]
    return [np.dtype, np.ndarray, _reconstruct, scalar, *dtypes]


def load_checkpoint_safely(filename: str, map_location: Any = 'cpu') -> dict:
    """Load an nnU-Net/M3HL checkpoint with ``weights_only=True``: tensors, containers, numbers and the
    numpy types nnU-Net logs, nothing that can run code."""
    with torch.serialization.safe_globals(_numpy_globals()):
        return torch.load(filename, map_location=map_location, weights_only=True)
