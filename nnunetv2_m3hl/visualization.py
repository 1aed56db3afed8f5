"""PNG of one mixed training sample, for a visual check of masks, mixing and targets."""
import os
from typing import Dict

import matplotlib

matplotlib.use('agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _middle_slice(t: torch.Tensor) -> np.ndarray:
    """(C or 1, *spatial) -> 2D array of channel 0; 3D volumes are cut through the middle of axis 0."""
    a = t[0].detach().float().cpu().numpy()
    return a[a.shape[0] // 2] if a.ndim == 3 else a


def save_mixed_sample_png(panels: Dict[str, torch.Tensor], filename: str) -> None:
    """One row of panels, each a ``(C, *spatial)`` tensor of the same sample. Label-like panels (names
    containing 'target', 'prediction' or 'mask') use a discrete colour map."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    for ax, (name, tensor) in zip(np.atleast_1d(axes), panels.items()):
        discrete = any(k in name for k in ('target', 'prediction', 'mask'))
        ax.imshow(_middle_slice(tensor), cmap='tab10' if discrete else 'gray',
                  vmin=0 if discrete else None, vmax=9 if discrete else None, interpolation='nearest')
        ax.set_title(name, fontsize=9)
        ax.axis('off')
    plt.tight_layout()
    tmp = filename + '.tmp.png'
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, filename)
