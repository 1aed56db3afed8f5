"""Ablations, the nearest published baseline, the schedules compared with the default, and training-length
variants of M3HLTrainer. The ablations and the training lengths keep the default's schedule; the variants
compared with the fixed warm-up of a fifth (the confidence gates, the weak teacher view) keep that one, so that
their names still mean what benchmarks/HISTORY.md measured."""
import torch

from nnunetv2_m3hl.mixing import make_box_masks
from nnunetv2_m3hl.schedule import ema_horizon
from nnunetv2_m3hl.trainers.m3hl_trainer import M3HLTrainer


class M3HLTrainer_noHL(M3HLTrainer):
    """Mutual mask mix only, no feature consistency."""
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.high_weight = 0.0
        self.low_weight = 0.0


class M3HLTrainer_noHigh(M3HLTrainer):
    """Without the bottleneck (high-level) consistency."""
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.high_weight = 0.0


class M3HLTrainer_noLow(M3HLTrainer):
    """Without the last-decoder (low-level) consistency."""
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.low_weight = 0.0


class M3HLTrainer_noLCC(M3HLTrainer):
    """Raw argmax pseudo-labels, no largest-connected-component cleanup."""
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.largest_component = False


class M3HLTrainer_boxMask(M3HLTrainer):
    """Ablation of the mask shape: one box of 2/3 of each axis per couple (BCP's box) instead of block masks,
    no feature consistency, no pre-training. Not BCP itself: that is ``BCPTrainer_pretrain`` then
    ``BCPTrainer``."""
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.high_weight = 0.0
        self.low_weight = 0.0

    def make_masks(self, n_masks, spatial_shape, device):
        return make_box_masks(n_masks, spatial_shape, 2 / 3, device)


class M3HLTrainer_reference(M3HLTrainer):
    """The reference code's schedule: mixing with the teacher's terms at full weight from the first step, no
    supervised warm-up (the default before the schedule comparison in benchmarks/HISTORY.md)."""
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.supervised_warmup_until_ready = False
        self.supervised_warmup_fraction = 0.0


class M3HLTrainer_warmup(M3HLTrainer):
    """A fixed warm-up: the first fifth of the epochs plain nnU-Net supervision on the labeled patches (nnU-Net's
    own step, no copy-paste, so not BCP's pre-training stage), then M3HL with the teacher copied from that
    student, ready or not. ``M3HLTrainer``'s schedule until the warm-up until ready replaced it."""
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.supervised_warmup_until_ready = False
        self.supervised_warmup_fraction = 0.2


class M3HLTrainer_warmup10(M3HLTrainer_warmup):
    """A shorter fixed warm-up: the first tenth of the epochs."""
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.supervised_warmup_fraction = 0.1


class M3HLTrainer_rampup(M3HLTrainer_reference):
    """The teacher's terms (pseudo-labeled regions and feature consistency) ramp up with the mean-teacher
    family's sigmoid over the first half of the training (instead of a warm-up)."""
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.teacher_rampup_fraction = 0.5


class M3HLTrainer_lateTeacher(M3HLTrainer_reference):
    """The teacher joins once its EMA has averaged a full horizon (1 / (1 - ema_decay) = 100 steps) of the
    student's iterates: until then the student trains on the labeled regions of the mixed images only, and the
    EMA is warm-started so that no share of the teacher's random start is left when it joins."""
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.teacher_ema_warm_start = True
        self.teacher_join_steps = ema_horizon(self.ema_decay)


class M3HLTrainer_confidence95(M3HLTrainer_warmup):
    """The fixed warm-up of a fifth (the default it was compared with), with teacher voxels below 0.95 softmax
    confidence left out of the mix loss (UniMatch's threshold)."""
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.pseudo_label_confidence_threshold = 0.95


class M3HLTrainer_confidence80(M3HLTrainer_warmup):
    """The fixed warm-up of a fifth, with teacher voxels below 0.8 softmax confidence left out of the mix loss."""
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.pseudo_label_confidence_threshold = 0.8


class M3HLTrainer_readyWarmup(M3HLTrainer):
    """The supervised warm-up ends when the student is ready (every foreground class at 0.5 validation
    pseudo-Dice, or no new best EMA pseudo-Dice for 5 epochs), after half the epochs at the latest."""
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.supervised_warmup_until_ready = True
        self.warmup_ready_cap_fraction = 0.5


class M3HLTrainer_readyWarmup_uncapped(M3HLTrainer_readyWarmup):
    """The warm-up until the student is ready, without a cap: a student that never gets ready trains as nnU-Net
    throughout, so a budget too short for the teacher costs nothing. Now ``M3HLTrainer``'s own schedule; the name
    stays for the benchmarks that measured it."""
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.warmup_ready_cap_fraction = 1.0


class M3HLTrainer_heldFloor(M3HLTrainer):
    """The default's warm-up, but the class floor must hold for 5 consecutive epochs (the patience) before mixing
    starts: with a single foreground class (CVC-ClinicDB) the default's floor is passed after one or two epochs of
    50 iterations. The candidate to measure on CVC-ClinicDB's validation frames."""
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.warmup_ready_floor_epochs = 5


class M3HLTrainer_readyWarmup_confidence95(M3HLTrainer_readyWarmup):
    """Both: the warm-up until the student is ready, then pseudo-labels gated at 0.95."""
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.pseudo_label_confidence_threshold = 0.95


class M3HLTrainer_weakTeacherView(M3HLTrainer_warmup):
    """The fixed warm-up of a fifth (the default it was compared with), with the teacher seeing each unlabeled
    patch after nnU-Net's geometric augmentation only and the student the same patch with the photometric
    augmentation too (FixMatch's weak and strong views)."""
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.teacher_sees_weak_view = True


class M3HLTrainer_weakTeacherView_confidence95(M3HLTrainer_weakTeacherView):
    """The weak teacher view, and its pseudo-labels gated at 0.95 (UniMatch's pairing of the two)."""
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.pseudo_label_confidence_threshold = 0.95


class M3HLTrainer_250epochs(M3HLTrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 250


class M3HLTrainer_500epochs(M3HLTrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 500


class M3HLTrainer_2epochs(M3HLTrainer):
    """A smoke run (like nnU-Net's short trainers): two full epochs, the first supervised and the second M3HL
    (a fixed warm-up, so that the smoke run reaches the mixing step whether the student is ready or not)."""
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2
        self.supervised_warmup_until_ready = False
        self.supervised_warmup_fraction = 0.5
