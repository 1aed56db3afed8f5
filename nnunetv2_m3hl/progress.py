"""nnU-Net's local logger extended with the M3HL terms, and a fourth panel in ``progress.png``."""
import io
import os

import matplotlib

matplotlib.use('agg')
import matplotlib.pyplot as plt  # noqa: E402
from batchgenerators.utilities.file_and_folder_operations import join  # noqa: E402
from PIL import Image  # noqa: E402

from nnunetv2.training.logging.nnunet_logger import LocalLogger  # noqa: E402

M3HL_LOG_KEYS = ('mix_losses', 'high_losses', 'low_losses', 'pseudo_fg_share', 'skipped_steps')


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
        super().plot_progress_png(output_folder)
        epoch = min(len(v) for v in self.my_fantastic_logging.values())
        if epoch == 0:
            return
        x = list(range(epoch))
        fig, ax = plt.subplots(1, 1, figsize=(30, 14))
        log = self.my_fantastic_logging
        ax.plot(x, log['mix_losses'][:epoch], color='b', label='mix loss', linewidth=4)
        ax.plot(x, log['high_losses'][:epoch], color='m', label='L_high', linewidth=4)
        ax.plot(x, log['low_losses'][:epoch], color='c', label='L_low', linewidth=4)
        ax2 = ax.twinx()
        ax2.plot(x, log['pseudo_fg_share'][:epoch], color='g', ls='dotted', label='pseudo-label fg share',
                 linewidth=3)
        ax.set_xlabel('epoch')
        ax.set_ylabel('loss')
        ax2.set_ylabel('foreground share')
        ax.legend(loc=(0, 1))
        ax2.legend(loc=(0.3, 1))
        plt.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format='png')
        plt.close(fig)
        # append the panel below nnU-Net's own three panels
        path = join(output_folder, 'progress.png')
        with Image.open(path) as top, Image.open(buffer) as panel:
            combined = Image.new('RGB', (max(top.width, panel.width), top.height + panel.height), 'white')
            combined.paste(top.convert('RGB'), (0, 0))
            combined.paste(panel.convert('RGB'), (0, top.height))
        tmp = path + '.tmp.png'
        combined.save(tmp)
        os.replace(tmp, path)
