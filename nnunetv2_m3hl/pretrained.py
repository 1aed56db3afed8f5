"""Starting M3HL from a trained model given with nnU-Net's ``-pretrained_weights``.

nnU-Net's entry path (``maybe_load_checkpoint``) initializes the trainer first, which makes the teacher, and only
then loads the file into the student with ``load_pretrained_weights``, which leaves out the segmentation heads
(so that a model can be fine-tuned on another label set) and tells the trainer nothing. So the trainer watches
its student: when weights arrive through that function, it notes the file, and before training starts it puts
the whole pretrained model (heads included) into student and teacher when the label sets agree.
"""
import inspect
from typing import Optional, Tuple

from torch import nn

SEGMENTATION_HEAD_KEY = '.seg_layers.'


class PretrainedWeightsWatcher:
    """Notes the file that nnU-Net's ``load_pretrained_weights`` loads into ``module``."""

    def __init__(self, module: nn.Module):
        from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
        self._loader_code = load_pretrained_weights.__code__
        self.file: Optional[str] = None
        self._handle = module.register_load_state_dict_post_hook(self._after_load)

    def _after_load(self, module: nn.Module, incompatible_keys) -> None:
        # the function's own frame is on the stack while it loads; its argument is the file name
        frame = inspect.currentframe()
        while frame is not None:
            if frame.f_code is self._loader_code:
                self.file = frame.f_locals.get('fname')
                return
            frame = frame.f_back

    def remove(self) -> None:
        self._handle.remove()


def whole_model_state(checkpoint: dict, network_state: dict, labels: dict) -> Tuple[Optional[dict], str]:
    """The pretrained ``network_weights`` when they can replace the whole network, heads included (same keys and
    shapes, and the same label set when the checkpoint records its dataset), else None; with the reason."""
    weights = checkpoint.get('network_weights', {})
    pretrained_labels = (checkpoint.get('init_args') or {}).get('dataset_json', {}).get('labels')
    if pretrained_labels is not None and dict(pretrained_labels) != dict(labels):
        return None, f"its labels {dict(pretrained_labels)} differ from this dataset's {dict(labels)}"
    mismatched = [k for k, v in network_state.items() if k not in weights or weights[k].shape != v.shape]
    if mismatched:
        return None, f"its weights do not cover this network ({mismatched[0]} missing or of another shape)"
    return {k: weights[k] for k in network_state}, 'same labels' if pretrained_labels is not None else \
        'the checkpoint records no labels, the heads have the same shapes'
