"""M3HLTrainer: M³HL semi-supervised training (mutual mask mix + high/low-level feature consistency)
as an nnU-Net v2 trainer. The algorithm lives in the package modules; this class only wires them
into nnU-Net's hooks."""
import os
from os.path import join
from typing import List, Optional

import numpy as np
import torch
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from torch import autocast
from torch import distributed as dist

from nnunetv2.configuration import default_num_processes
from nnunetv2.paths import nnUNet_raw
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context

from nnunetv2_m3hl.cascade import predict_unlabeled_for_next_stage, unlabeled_cascade_folder
from nnunetv2_m3hl.checkpointing import load_checkpoint_safely, save_atomically
from nnunetv2_m3hl.features import HIGH_COSINE_PER_SAMPLE, FeatureTap, high_level_loss, is_compiled, \
    low_level_loss, unwrap_network
from nnunetv2_m3hl.label_forms import label_form_for
from nnunetv2_m3hl.mixing import MixedBatch, downsample_for_deep_supervision, make_block_masks, mix_images, \
    number_of_couples
from nnunetv2_m3hl.overlap import PseudoLabelCleanup
from nnunetv2_m3hl.pretrained import PretrainedWeightsWatcher, whole_model_state
from nnunetv2_m3hl.progress import M3HLLocalLogger
from nnunetv2_m3hl.schedule import ema_decay_at, student_is_ready, teacher_terms_scale
from nnunetv2_m3hl.step_guard import NonFiniteStepGuard
from nnunetv2_m3hl.teacher import broadcast_teacher, ema_update, kept_share_per_class, make_teacher
from nnunetv2_m3hl.unlabeled import UnlabeledDataLoader, n_proc_da_environment, n_proc_split, preprocess_unlabeled, \
    preprocessed_unlabeled_folder, unlabeled_identifiers
from nnunetv2_m3hl.views import WeakAndStrongViews, split_views
from nnunetv2_m3hl.visualization import save_mixed_sample_png

TEACHER_CHECKPOINT = 'checkpoint_final_teacher.pth'


def _cycle(batch: torch.Tensor, n: int) -> torch.Tensor:
    return batch if batch.shape[0] == n else batch[torch.arange(n) % batch.shape[0]]


class M3HLTrainer(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # reference settings (DESIGN section 5)
        self.blocks_per_axis = 4
        self.masked_ratio = 0.5
        self.u_weight = 0.5
        self.ema_decay = 0.99
        self.high_weight = 1.0      # total = mix + (high_weight * L_high + low_weight * L_low) / 2
        self.low_weight = 1.0
        self.high_cosine_over = HIGH_COSINE_PER_SAMPLE  # one cosine per sample, as the reference code
        self.largest_component = True
        # teacher voxels whose top softmax probability is below this are left out of the pseudo-labeled region of
        # the mix loss (weight 0 in Dice and CE), as UniMatch gates at 0.95; None: every voxel counts (the reference)
        self.pseudo_label_confidence_threshold = None
        # the teacher sees the unlabeled patch after nnU-Net's geometric transforms only, the student the same patch
        # with the photometric ones too (FixMatch's weak and strong views; views.py); False: both see the fully
        # augmented patch (the reference)
        self.teacher_sees_weak_view = False
        # where the cleanup runs: 'side_stream' (CUDA: overlapped with the student's forward on a second stream;
        # elsewhere the same as 'sync'), 'sync', 'host_thread' (scipy in worker threads), or 'teacher_side_stream'
        # (CUDA: the teacher's forward too, at the same time as the student's; not measured on a GPU yet); every
        # mode keeps the same voxels. side_stream was the fastest on an H200 at ACDC's and LA's native plans
        # (benchmarks/HISTORY.md)
        self.pseudo_label_cleanup_mode = 'side_stream'
        self.unlabeled_batch_size = None  # None: the labeled batch size of this rank
        # the first epochs train with nnU-Net's own supervised step on the labeled patches (plain supervision, not
        # BCP's copy-paste pre-training); the teacher then starts as a copy of that student. The warm-up ends once
        # the student is ready (schedule.student_is_ready: every foreground class at the floor on nnU-Net's
        # validation pseudo-Dice, or no new best EMA pseudo-Dice for `patience` epochs), after
        # `warmup_ready_cap_fraction` of the epochs at the latest. With no cap (1), a student that never gets ready
        # trains as nnU-Net throughout, so a budget too short for the teacher costs nothing. Chosen on ACDC's
        # validation patients at 600 and 5000 iterations as the only candidate never behind nnU-Net
        # (benchmarks/HISTORY.md, "Choosing the next default")
        self.supervised_warmup_until_ready = True
        self.warmup_ready_class_floor = 0.5
        self.warmup_ready_patience = 5
        self.warmup_ready_floor_epochs = 1  # consecutive epochs at the floor (M3HLTrainer_heldFloor: 5)
        self.warmup_ready_cap_fraction = 1.0
        # with supervised_warmup_until_ready False: a fixed share of the epochs instead (a fifth was the default
        # before, M3HLTrainer_warmup; the reference code has none, M3HLTrainer_reference)
        self.supervised_warmup_fraction = 0.2
        # the epoch at which mixing started or starts, once it is decided (a ready student, or a whole pretrained
        # model, which needs no warm-up); kept in the checkpoints so that a resumed run keeps its schedule
        self.warmup_ended_at = None
        # when the teacher's terms (pseudo-labeled regions, L_high, L_low) enter the loss, counted in mixing
        # steps (see schedule.py); the reference: from the first step at full weight, constant EMA decay
        self.teacher_join_steps = 0
        self.teacher_rampup_fraction = 0.0  # share of the mixing steps over which those terms ramp up (sigmoid)
        self.teacher_ema_warm_start = False  # decay min(1 - 1/(step + 1), ema_decay): no lingering random init
        self.mixing_step = 0
        # robustness and diagnostics
        self.max_consecutive_nonfinite = 20
        self.mixed_sample_png_every = 50  # epochs; 0 disables
        self.teacher = None
        self.teacher_network = None  # the teacher, compiled when nnU-Net compiles the student
        self.dataloader_unlabeled = None
        self.step_guard = NonFiniteStepGuard(self.max_consecutive_nonfinite)
        self._capture_example = False
        self._example_panels = None
        self.logger.local_logger = M3HLLocalLogger()

    # ------------------------------------------------------------------ settings
    def m3hl_settings(self) -> dict:
        return {k: getattr(self, k) for k in (
            'blocks_per_axis', 'masked_ratio', 'u_weight', 'ema_decay', 'high_weight', 'low_weight',
            'high_cosine_over', 'largest_component', 'pseudo_label_confidence_threshold', 'teacher_sees_weak_view',
            'unlabeled_batch_size', 'supervised_warmup_fraction', 'supervised_warmup_until_ready',
            'warmup_ready_class_floor', 'warmup_ready_patience', 'warmup_ready_floor_epochs',
            'warmup_ready_cap_fraction', 'teacher_join_steps',
            'teacher_rampup_fraction', 'teacher_ema_warm_start')}

    @property
    def supervised_warmup_epochs(self) -> int:
        """Epochs of the supervised warm-up; while a warm-up until ready runs, its cap."""
        if self.warmup_ended_at is not None:
            return self.warmup_ended_at
        if self.supervised_warmup_until_ready:
            return int(self.warmup_ready_cap_fraction * self.num_epochs)
        return int(self.supervised_warmup_fraction * self.num_epochs + 0.5)

    def mixing_steps_before(self, epoch: int) -> int:
        """M3HL steps (one unlabeled batch each) that the schedule runs before ``epoch`` starts."""
        return max(0, epoch - self.supervised_warmup_epochs) * self.num_iterations_per_epoch

    def in_supervised_warmup(self) -> bool:
        return self.current_epoch < self.supervised_warmup_epochs

    def teacher_terms_scale(self) -> float:
        """Factor of the teacher's terms at the current mixing step (1 throughout for the reference step)."""
        mixing_steps = (self.num_epochs - self.supervised_warmup_epochs) * self.num_iterations_per_epoch
        ramp_steps = int(round(self.teacher_rampup_fraction * mixing_steps))
        return teacher_terms_scale(self.mixing_step, self.teacher_join_steps, ramp_steps)

    def make_masks(self, n_masks: int, spatial_shape, device: torch.device) -> torch.Tensor:
        """Couple masks; variants override this to change the mixing pattern."""
        return make_block_masks(n_masks, spatial_shape, self.blocks_per_axis, self.masked_ratio, device)

    # ------------------------------------------------------------------ setup
    def initialize(self):
        super().initialize()
        student = unwrap_network(self.network)
        self.teacher = make_teacher(student)
        self.teacher.decoder.deep_supervision = False
        # compiled when nnU-Net compiled the student (on CUDA unless nnUNet_compile says otherwise): an eager
        # teacher next to a compiled student would be the slowest forward pass of the step. The compiled wrapper
        # reads the teacher's own parameters, so the EMA's in-place updates reach it
        self.teacher_network = torch.compile(self.teacher) if is_compiled(self.network) else self.teacher
        if self.teacher_network is not self.teacher:
            self.print_to_log_file('Using torch.compile for the teacher too')
        self.student_tap = FeatureTap(student)
        self.teacher_tap = FeatureTap(self.teacher)
        self._pretrained_watcher = PretrainedWeightsWatcher(student)
        self.pseudo_label_cleanup = PseudoLabelCleanup(self.pseudo_label_cleanup_mode)
        # label maps or label regions: what differs between them (pseudo-labels, cleanup, targets, loss)
        self.label_form = label_form_for(self.label_manager)
        mix_loss = self.label_form.mix_loss(self.u_weight, self.pseudo_label_confidence_threshold is not None)
        self.region_loss = mix_loss
        # same deep-supervision weights as nnU-Net's own loss
        self.mix_loss = DeepSupervisionWrapper(mix_loss, self.loss.weight_factors) \
            if self.enable_deep_supervision else mix_loss
        self.print_to_log_file(f"M3HL settings: {self.m3hl_settings()}")

    @property
    def unlabeled_folder(self) -> str:
        return preprocessed_unlabeled_folder(self.preprocessed_dataset_folder_base,
                                             self.configuration_manager.data_identifier)

    def prepare_unlabeled_data(self) -> None:
        """Preprocess what is missing or stale (rank 0 only; other ranks wait)."""
        if self.local_rank == 0:
            if nnUNet_raw.is_set():
                preprocess_unlabeled(self.plans_manager.dataset_name, self.configuration_name,
                                     self.plans_manager.plans_name, num_processes=default_num_processes)
                if self.is_cascaded:
                    predict_unlabeled_for_next_stage(self.plans_manager.dataset_name, self.configuration_name,
                                                     self.fold, self.__class__.__name__, self.plans_manager.plans_name,
                                                     self.device, default_num_processes)
            elif not unlabeled_identifiers(self.unlabeled_folder):
                raise RuntimeError("nnUNet_raw is not set and no preprocessed unlabeled scans exist in "
                                   f"{self.unlabeled_folder}: set nnUNet_raw so that imagesUnlabeledTr/ can be "
                                   f"preprocessed.")
            else:
                self.print_to_log_file("nnUNet_raw is not set: using the preprocessed unlabeled scans as they are")
        if self.is_ddp:
            dist.barrier()

    def start_from_pretrained_weights(self) -> None:
        """After ``-pretrained_weights`` (a fresh training; nnU-Net refuses it with ``--c``): student and teacher
        start from the whole pretrained model when it has this dataset's labels; otherwise nnU-Net's transfer
        (heads left out) stands and the teacher starts as a copy of that student."""
        file = self._pretrained_watcher.file
        if file is None:
            return
        self._pretrained_watcher.file = None
        student = unwrap_network(self.network)
        state, reason = whole_model_state(load_checkpoint_safely(file, map_location=self.device),
                                          student.state_dict(), self.dataset_json['labels'])
        if state is not None:
            student.load_state_dict(state)
            # that teacher is trained already: mixing starts at once
            self.warmup_ended_at = 0
            self.print_to_log_file(f"pretrained weights {file}: {reason}, so student and teacher start from the "
                                   f"whole pretrained model, segmentation heads included, and mixing starts at "
                                   f"once (no supervised warm-up)")
        else:
            self.print_to_log_file(f"pretrained weights {file}: {reason}; nnU-Net's transfer without the "
                                   f"segmentation heads stands, and the teacher starts as a copy of that student")
        self.teacher.load_state_dict(student.state_dict())

    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        self.start_from_pretrained_weights()
        self.prepare_unlabeled_data()
        super().on_train_start()
        self.print_to_log_file(f"{len(unlabeled_identifiers(self.unlabeled_folder))} unlabeled scans, "
                               f"{self._unlabeled_batch_size()} unlabeled patches per step")
        if self.is_ddp:
            # identical teachers on every rank, also after a resume
            broadcast_teacher(self.teacher)

    def _unlabeled_batch_size(self) -> int:
        return self.unlabeled_batch_size or self.batch_size

    def get_dataloaders(self):
        n_labeled, n_unlabeled = n_proc_split(get_allowed_n_proc_DA())
        with n_proc_da_environment(n_labeled):
            dl_train, dl_val = super().get_dataloaders()
        self.dataloader_unlabeled = self.get_unlabeled_dataloader(n_unlabeled)
        return dl_train, dl_val

    def get_unlabeled_transforms(self, rotation, dummy_2d: bool, mirror_axes):
        """The labeled loader's spatial and intensity augmentation; with ``teacher_sees_weak_view``, as the two
        stacked views of ``WeakAndStrongViews``."""
        transforms = self.get_training_transforms(
            self.configuration_manager.patch_size, rotation, None, mirror_axes, dummy_2d,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm,
            is_cascaded=self.is_cascaded, foreground_labels=self.label_manager.foreground_labels, regions=None,
            ignore_label=None)
        return WeakAndStrongViews(transforms) if self.teacher_sees_weak_view else transforms

    def get_unlabeled_dataloader(self, num_processes: int):
        """Same patch size and the same spatial and intensity augmentation as the labeled loader."""
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        transforms = self.get_unlabeled_transforms(rotation, dummy_2d, mirror_axes)
        loader = UnlabeledDataLoader(self.unlabeled_folder, self._unlabeled_batch_size(), initial_patch_size,
                                     self.configuration_manager.patch_size, self.label_manager, transforms,
                                     unlabeled_cascade_folder(self))
        if num_processes == 0:
            return SingleThreadedAugmenter(loader, None)
        return NonDetMultiThreadedAugmenter(loader, None, num_processes, num_cached=max(6, num_processes // 2),
                                            seeds=None, pin_memory=self.device.type == 'cuda', wait_time=0.002)

    # ------------------------------------------------------------------ training
    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        # derived from the epoch, so that a resumed training continues the schedule where it stopped
        self.mixing_step = self.mixing_steps_before(self.current_epoch)
        if self.supervised_warmup_epochs and self.current_epoch == self.supervised_warmup_epochs:
            # the student is identical on every rank, so are these copies
            self.teacher.load_state_dict(unwrap_network(self.network).state_dict())
            self.print_to_log_file(f"supervised warm-up done after {self.current_epoch} epochs: the teacher starts "
                                   f"as a copy of the student, mixing starts")
        every = self.mixed_sample_png_every
        self._capture_example = bool(every) and (self.current_epoch + 1) % every == 0 and self.local_rank == 0 \
            and not self.in_supervised_warmup()

    def train_step(self, batch: dict) -> dict:
        if self.in_supervised_warmup():
            return self.supervised_step(batch)
        unlabeled = next(self.dataloader_unlabeled)['data']
        if self.teacher_sees_weak_view:
            strong, weak = split_views(unlabeled)
            return self.m3hl_step(batch['data'], batch['target'], strong, weak)
        return self.m3hl_step(batch['data'], batch['target'], unlabeled)

    def supervised_step(self, batch: dict) -> dict:
        """nnU-Net's own step on the labeled batch (the warm-up); the M3HL terms are logged as absent."""
        out = super().train_step(batch)
        self.student_tap.features.clear()
        nan = np.array(np.nan)
        return {'loss': out['loss'], 'mix_loss': nan, 'high_loss': nan, 'low_loss': nan, 'pseudo_fg': nan,
                'skipped': np.array(0.0)}

    def _autocast(self):
        return autocast(self.device.type, enabled=True) if self.device.type == 'cuda' else dummy_context()

    def m3hl_step(self, x_labeled: torch.Tensor, target, x_unlabeled: torch.Tensor,
                  x_unlabeled_for_teacher: Optional[torch.Tensor] = None) -> dict:
        """One M3HL optimisation step on tensors (data loading excluded); the teacher sees
        ``x_unlabeled_for_teacher`` (the weak view) where given, else the student's ``x_unlabeled``."""
        y_labeled = target[0] if isinstance(target, list) else target
        # pair labeled i with unlabeled i; a smaller batch is cycled so that both batch sizes may differ
        n_pairs = max(x_labeled.shape[0], x_unlabeled.shape[0])
        x_l = _cycle(x_labeled, n_pairs).to(self.device, non_blocking=True)
        y_l = _cycle(y_labeled, n_pairs).to(self.device, non_blocking=True)
        x_u = _cycle(x_unlabeled, n_pairs).to(self.device, non_blocking=True)
        x_teacher = x_u if x_unlabeled_for_teacher is None else \
            _cycle(x_unlabeled_for_teacher, n_pairs).to(self.device, non_blocking=True)
        use_hl = self.high_weight != 0 or self.low_weight != 0
        scale = self.teacher_terms_scale()
        self.region_loss.u_weight = self.u_weight * scale

        # the student needs the mixed images only: the cleanup (or, with 'teacher_side_stream', the whole teacher
        # pass) may run while it computes
        teacher_outputs = self.pseudo_label_cleanup.run_teacher(lambda: self.teacher_pass(x_teacher),
                                                                 x_u.device)

        masks = self.make_masks(number_of_couples(n_pairs), x_l.shape[2:], self.device)
        images, from_unlabeled = mix_images(x_l, x_u, masks)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            output = self.network(images)
        student_high, student_low = self.student_tap.pop()

        pseudo, teacher_high, teacher_low = teacher_outputs.result()
        mixed = MixedBatch(images, self.label_form.mixed_targets(y_l, pseudo, from_unlabeled), from_unlabeled, masks)
        per_scale = downsample_for_deep_supervision([mixed.targets, mixed.from_unlabeled.bool()],
                                                    self._get_deep_supervision_scales())
        targets = [t for t, _ in per_scale]
        regions = [r for _, r in per_scale]
        with self._autocast():
            if self.enable_deep_supervision:
                mix = self.mix_loss(output, targets, regions)
            else:
                mix = self.mix_loss(output, targets[0], regions[0])
            zero = mix.new_zeros(())
            l_high = high_level_loss(student_high, teacher_high, self.high_cosine_over) \
                if use_hl and self.high_weight else zero
            l_low = low_level_loss(student_low, teacher_low) if use_hl and self.low_weight else zero
            loss = mix + scale * (self.high_weight * l_high + self.low_weight * l_low) / 2

        if self._capture_example:
            self._keep_example(x_l, x_u, mixed, output)

        (self.grad_scaler.scale(loss) if self.grad_scaler is not None else loss).backward()
        # checked after the backward, not before: the check waits for the GPU, and before the backward that wait
        # would leave the GPU idle while the backward's kernels are launched. A non-finite loss only makes
        # gradients that the skip drops (every rank runs the backward, so DDP's all-reduces stay matched)
        if not self.step_guard.all_ranks_finite(loss):
            return self._skip_nonfinite_step(loss)
        self.step_guard.step_done()
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        ema_update(self.teacher, unwrap_network(self.network),
                   ema_decay_at(self.mixing_step, self.ema_decay, self.teacher_ema_warm_start))
        self.mixing_step += 1
        # one copy to the host (one wait for the GPU) for everything logged
        logged = [v.detach().float().reshape(1) for v in (loss, mix, l_high, l_low, (pseudo > 0).float().mean())]
        if self.pseudo_label_confidence_threshold is not None:
            logged.append(kept_share_per_class(pseudo, self.label_manager.num_segmentation_heads))
        logged = torch.cat(logged).cpu().numpy()
        out = {key: np.array(v) for key, v in zip(('loss', 'mix_loss', 'high_loss', 'low_loss', 'pseudo_fg'), logged)}
        if self.pseudo_label_confidence_threshold is not None:
            out['kept_share'] = logged[5:]
        out['skipped'] = np.array(0.0)
        return out

    def teacher_pass(self, x_unlabeled: torch.Tensor):
        """The teacher's forward on the unlabeled patches: (the started pseudo-labels, whose ``result()`` is the
        label map or the region maps of ``label_forms``, its bottleneck features, its last decoder features)."""
        with torch.no_grad(), self._autocast():
            teacher_logits = self.teacher_network(x_unlabeled)
            teacher_high, teacher_low = self.teacher_tap.pop()
        pseudo = self.label_form.start_pseudo_labels(
            teacher_logits, self.pseudo_label_cleanup if self.largest_component else None,
            self.pseudo_label_confidence_threshold)
        del teacher_logits  # not held through the student's forward and backward
        return pseudo, teacher_high, teacher_low

    def _skip_nonfinite_step(self, loss: torch.Tensor) -> dict:
        """Every rank skips together (see ``step_guard``)."""
        self.optimizer.zero_grad(set_to_none=True)
        where = 'this rank' if not torch.isfinite(loss) else 'another rank'
        self.step_guard.max_consecutive = self.max_consecutive_nonfinite
        self.print_to_log_file(f"WARNING: non-finite loss on {where} ({loss.item()} here), step skipped on every "
                               f"rank ({self.step_guard.consecutive + 1} in a row)")
        self.step_guard.step_skipped()
        nan = np.array(np.nan)
        return {'loss': nan, 'mix_loss': nan, 'high_loss': nan, 'low_loss': nan, 'pseudo_fg': nan,
                'skipped': np.array(1.0)}

    def _keep_example(self, x_l, x_u, mixed, output) -> None:
        logits = output[0] if isinstance(output, (list, tuple)) else output
        self._example_panels = {
            'labeled image': x_l[0], 'unlabeled image': x_u[0], 'mask (1 = unlabeled)': mixed.from_unlabeled[0],
            'mixed image': mixed.images[0], 'mixed target': self.label_form.shown_target(mixed.targets[0]),
            'student prediction': self.label_form.shown_prediction(logits[0])}
        self._example_panels = {k: v.detach().cpu() for k, v in self._example_panels.items()}
        self._capture_example = False

    def _epoch_mean(self, values: np.ndarray) -> float:
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, values)
            values = np.concatenate([np.atleast_1d(v) for v in gathered])
        values = np.asarray(values, dtype=float)
        return float(np.nanmean(values)) if np.isfinite(values).any() else float('nan')

    def _kept_share_of_epoch(self, kept: List[np.ndarray]) -> List[float]:
        """Per class (background first), the mean over the epoch's steps of the share of the teacher's voxels that
        passed the confidence gate; NaN without a gate or a mixing step."""
        n_classes = self.label_manager.num_segmentation_heads
        values = np.stack(kept) if kept else np.full((1, n_classes), np.nan)
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, values)
            values = np.concatenate(gathered)
        with np.errstate(all='ignore'):
            return [float(np.nanmean(c)) if np.isfinite(c).any() else float('nan') for c in values.T]

    def on_train_epoch_end(self, train_outputs: List[dict]):
        kept = [o.pop('kept_share') for o in train_outputs if 'kept_share' in o]
        outputs = collate_outputs(train_outputs)
        e = self.current_epoch
        self.logger.log('train_losses', self._epoch_mean(outputs['loss']), e)
        for key, log_key in (('mix_loss', 'mix_losses'), ('high_loss', 'high_losses'), ('low_loss', 'low_losses'),
                             ('pseudo_fg', 'pseudo_fg_share')):
            self.logger.log(log_key, self._epoch_mean(outputs[key]), e)
        skipped = self._epoch_mean(outputs['skipped']) * len(train_outputs)
        self.logger.log('skipped_steps', skipped, e)
        kept_share = self._kept_share_of_epoch(kept)
        self.logger.log('pseudo_kept_share', kept_share, e)
        self.print_to_log_file(
            f"mix_loss {self.logger.get_value('mix_losses', -1):.4f}  L_high {self.logger.get_value('high_losses', -1):.4f}"
            f"  L_low {self.logger.get_value('low_losses', -1):.4f}  pseudo-label fg share "
            f"{self.logger.get_value('pseudo_fg_share', -1):.4f}"
            + (f"  skipped steps {skipped:.0f}" if skipped else '')
            + (f"  kept pseudo-label share per class {np.round(kept_share, 3).tolist()}"
               if np.isfinite(kept_share).any() else '')
            + (f"  teacher terms x{self.teacher_terms_scale():.3f}" if not self.in_supervised_warmup() else ''))

    def on_epoch_end(self):
        if self.supervised_warmup_until_ready and self.warmup_ended_at is None and self.in_supervised_warmup() \
                and student_is_ready(self.logger.get_value('dice_per_class_or_region', None),
                                     self.logger.get_value('ema_fg_dice', None), self.warmup_ready_class_floor,
                                     self.warmup_ready_patience, self.warmup_ready_floor_epochs):
            # the validation Dice is the same on every rank (nnU-Net gathers it), so is this decision
            self.warmup_ended_at = self.current_epoch + 1
            self.print_to_log_file(f"the student is ready after {self.warmup_ended_at} supervised epochs "
                                   f"(validation pseudo-Dice per class "
                                   f"{np.round(self.logger.get_value('dice_per_class_or_region', -1), 3).tolist()})")
        if self._example_panels is not None:
            save_mixed_sample_png(self._example_panels,
                                  join(self.output_folder, f'mixed_sample_epoch_{self.current_epoch:04d}.png'))
            self._example_panels = None
        super().on_epoch_end()

    def on_train_end(self):
        if self.mixing_steps_before(self.num_epochs) == 0 and self.num_epochs > 0:
            # no mixing step ran: the teacher was never copied from the student, and the student is all there is
            self.teacher.load_state_dict(unwrap_network(self.network).state_dict())
            self.print_to_log_file("training ended within the supervised warm-up: no mixing step ran, and the teacher "
                                   "checkpoint is the student")
        super().on_train_end()
        if isinstance(self.dataloader_unlabeled, (NonDetMultiThreadedAugmenter, MultiThreadedAugmenter)):
            self.dataloader_unlabeled._finish()
        self.pseudo_label_cleanup.close()

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self, network_weights: dict, with_training_state: bool) -> dict:
        return {
            'network_weights': network_weights,
            'optimizer_state': self.optimizer.state_dict() if with_training_state else None,
            'grad_scaler_state': self.grad_scaler.state_dict()
            if with_training_state and self.grad_scaler is not None else None,
            'logging': self.logger.get_checkpoint(),
            '_best_ema': self._best_ema,
            'current_epoch': self.current_epoch + 1,
            'init_args': self.my_init_kwargs,
            # the class nnUNetv2_predict builds the network with: a plain nnU-Net install resolves it
            'trainer_name': self.inference_trainer_name(),
            'inference_allowed_mirroring_axes': self.inference_allowed_mirroring_axes,
        }

    @classmethod
    def inference_trainer_name(cls) -> str:
        """The trainer name stored in checkpoints, which is all ``nnUNetv2_predict`` uses a trainer class for: to
        build the network. M3HL trains the plans-generated network unchanged, so it is ``nnUNetTrainer`` and an
        M3HL model predicts where only nnU-Net is installed; a subclass that builds another network keeps its own
        name (and needs this package to predict)."""
        if cls.build_network_architecture is nnUNetTrainer.build_network_architecture:
            return nnUNetTrainer.__name__
        return cls.__name__

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint plus the teacher and the M3HL settings, written atomically. With the
        final checkpoint, the teacher is also written as a checkpoint nnUNetv2_predict -chk can load."""
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file('No checkpoint written, checkpointing is disabled')
            return
        checkpoint = self._checkpoint(unwrap_network(self.network).state_dict(), with_training_state=True)
        checkpoint['m3hl'] = {'teacher_weights': self.teacher.state_dict(), 'settings': self.m3hl_settings(),
                              'trainer_name': self.__class__.__name__, 'warmup_ended_at': self.warmup_ended_at}
        save_atomically(checkpoint, filename)
        if os.path.basename(filename) == 'checkpoint_final.pth':
            teacher = self._checkpoint(self.teacher.state_dict(), with_training_state=False)
            teacher['m3hl'] = {'settings': self.m3hl_settings(), 'trainer_name': self.__class__.__name__,
                               'weights': 'teacher'}
            save_atomically(teacher, join(os.path.dirname(filename), TEACHER_CHECKPOINT))

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        checkpoint = load_checkpoint_safely(filename_or_checkpoint, map_location=self.device) \
            if isinstance(filename_or_checkpoint, str) else filename_or_checkpoint
        m3hl = checkpoint.get('m3hl')
        if m3hl is None or 'teacher_weights' not in m3hl:
            # e.g. fine-tuning from an nnUNetTrainer checkpoint (or a teacher's own): the teacher starts as the loaded
            # student
            self.print_to_log_file("checkpoint has no M3HL teacher; the teacher starts as a copy of the student")
            self.teacher.load_state_dict(unwrap_network(self.network).state_dict())
            return
        self.teacher.load_state_dict(m3hl['teacher_weights'])
        self.warmup_ended_at = m3hl.get('warmup_ended_at')
        if m3hl['settings'] != self.m3hl_settings():
            self.print_to_log_file(f"WARNING: checkpoint was trained with M3HL settings {m3hl['settings']}, "
                                   f"continuing with {self.m3hl_settings()}")
