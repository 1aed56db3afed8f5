"""nnU-Net's local logger extended with the M3HL terms, plotted per epoch in ``progress_m3hl.png``."""
import os

import numpy as np

import matplotlib

matplotlib.use('agg')
import matplotlib.pyplot as plt  # noqa: E402
from batchgenerators.utilities.file_and_folder_operations import join  # noqa: E402

from nnunetv2.training.logging.nnunet_logger import LocalLogger  # noqa: E402

M3HL_LOG_KEYS = ('mix_losses', 'high_losses', 'low_losses', 'pseudo_fg_share', 'skipped_steps', 'pseudo_kept_share')


class M3HLLocalLogger(LocalLogger):
    def __init__(self, verbose: bool = False):
        super().__init__(verbose)
        for key in M3HL_LOG_KEYS:
            self.my_fantastic_logging[key] = []

    def load_checkpoint(self, checkpoint: dict):
        super().load_checkpoint(checkpoint)
        # checkpoints written by plain nnUNetTrainer lack our keys: fill them so that plotting lines up
        epochs = len(self.my_fantastic_logging.get('train_losses', []))
        for key in M3HL_LOG_KEYS:
            self.my_fantastic_logging.setdefault(key, [float('nan')] * epochs)

    def plot_progress_png(self, output_folder):
        """nnU-Net's ``progress.png``, and the M3HL terms in ``progress_m3hl.png`` beside it. A panel of its own,
        not appended to nnU-Net's image: decoding and re-encoding that 3000 x 5400 pixel picture every epoch took
        some 10% of a narrow 2D network's epoch on two CPU cores."""
        super().plot_progress_png(output_folder)
        epoch = min(len(v) for v in self.my_fantastic_logging.values())
        if epoch == 0:
            return
        x = list(range(epoch))
        fig, ax = plt.subplots(1, 1, figsize=(12, 5))
        log = self.my_fantastic_logging
        ax.plot(x, log['mix_losses'][:epoch], color='b', label='mix loss', linewidth=2)
        ax.plot(x, log['high_losses'][:epoch], color='m', label='L_high', linewidth=2)
        ax.plot(x, log['low_losses'][:epoch], color='c', label='L_low', linewidth=2)
        ax2 = ax.twinx()
        ax2.plot(x, log['pseudo_fg_share'][:epoch], color='g', ls='dotted', label='pseudo-label fg share',
                 linewidth=2)
        # one share per class and epoch (background first); NaN without a confidence gate
        width = max(np.size(v) for v in log['pseudo_kept_share'][:epoch])
        kept = np.array([np.resize(np.asarray(v, dtype=float), width) for v in log['pseudo_kept_share'][:epoch]])
        for c in range(1, width):
            if np.isfinite(kept[:, c]).any():
                ax2.plot(x, kept[:, c], ls='--', linewidth=1.5, label=f'kept share, class {c}')
        ax.set_xlabel('epoch')
        ax.set_ylabel('loss')
        ax2.set_ylabel('share')
        ax.legend(loc=(0, 1))
        ax2.legend(loc=(0.3, 1), ncol=2)
        plt.tight_layout()
        path = join(output_folder, 'progress_m3hl.png')
        tmp = path + '.tmp.png'
        fig.savefig(tmp, dpi=80)
        plt.close(fig)
        os.replace(tmp, path)
