"""M³HL semi-supervised segmentation (mutual mask mix + high/low-level feature consistency) for nnU-Net v2."""
import os

__version__ = '0.1.0'


def trainer_path() -> str:
    """The folder to put on ``nnUNet_extTrainer``: it holds only trainer modules."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), 'trainers')
