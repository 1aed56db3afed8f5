"""BCP (Bai et al., "Bidirectional Copy-Paste for Semi-Supervised Medical Image Segmentation", CVPR 2023) as
published, in nnU-Net's loop: the baseline M3HL is compared with.

Stage 1, ``BCPTrainer_pretrain``: supervised pre-training on labeled patches pasted into each other (one box of
2/3 of every axis per batch, half the batch pasted into the other half), nnU-Net's loss on the pasted labels.
Its ``checkpoint_best.pth`` is the model chosen on nnU-Net's validation (the EMA pseudo-Dice), as BCP chooses
its pre-trained model on the validation set.

Stage 2, ``BCPTrainer``: self-training from that model, student and teacher both (``-pretrained_weights``):
bidirectional copy-paste of labeled and unlabeled patches with one box per batch (the labeled box pasted
into the unlabeled patch and the unlabeled box into the labeled one), the EMA teacher's largest-component
pseudo-labels, weight 0.5 on pseudo-labeled voxels, no feature consistency.

    nnUNetv2_train D C F -tr BCPTrainer_pretrain
    nnUNetv2_train D C F -tr BCPTrainer -pretrained_weights \\
        $nnUNet_results/DatasetD_NAME/BCPTrainer_pretrain__nnUNetPlans__C/fold_F/checkpoint_best.pth
"""
import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_m3hl.mixing import copy_paste_halves, downsample_for_deep_supervision, make_box_masks
from nnunetv2_m3hl.trainers.m3hl_trainer import M3HLTrainer

BOX_FRACTION = 2 / 3


class BCPTrainer_pretrain(nnUNetTrainer):
    """BCP stage 1: labeled-to-labeled copy-paste, otherwise nnU-Net's own step."""

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.box_fraction = BOX_FRACTION

    def train_step(self, batch: dict) -> dict:
        data = batch['data']
        target = batch['target']
        full_res = target[0] if isinstance(target, list) else target
        box = make_box_masks(1, data.shape[2:], self.box_fraction, data.device)
        # BCP's mask is 1 outside the box: the second half's box content is pasted into the first half
        images, labels = copy_paste_halves(data, full_res, 1 - box)
        if isinstance(target, list):
            labels = [level[0] for level in downsample_for_deep_supervision([labels],
                                                                            self._get_deep_supervision_scales())]
        return super().train_step({**batch, 'data': images, 'target': labels})


class BCPTrainer(M3HLTrainer):
    """BCP stage 2: self-training from the pre-trained model (start it with ``-pretrained_weights``)."""

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.high_weight = 0.0
        self.low_weight = 0.0
        self.supervised_warmup_until_ready = False  # its start is BCPTrainer_pretrain, not a warm-up
        self.supervised_warmup_fraction = 0.0
        self.box_fraction = BOX_FRACTION
        self._resumed = False

    def make_masks(self, n_masks, spatial_shape, device):
        # one box per batch, shared by every couple; 1 outside it, so that the labeled box lands in the
        # unlabeled patch of even pairs and the unlabeled box in the labeled patch of odd pairs
        box = make_box_masks(1, spatial_shape, self.box_fraction, device)
        return (1 - box).expand(n_masks, *spatial_shape)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        self._resumed = True

    def start_from_pretrained_weights(self) -> None:
        pretrained = self._pretrained_watcher.file is not None
        super().start_from_pretrained_weights()
        if not (pretrained or self._resumed):
            raise RuntimeError(
                "BCPTrainer is BCP's self-training stage and starts from a pre-trained model. Train the pre-training "
                "stage first and pass its best checkpoint: nnUNetv2_train D C F -tr BCPTrainer_pretrain, then "
                "nnUNetv2_train D C F -tr BCPTrainer -pretrained_weights "
                "$nnUNet_results/<dataset>/BCPTrainer_pretrain__<plans>__<configuration>/fold_F/checkpoint_best.pth")
