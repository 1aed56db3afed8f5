"""The cascade's second stage (``3d_cascade_fullres``) with unlabeled scans. nnU-Net feeds that stage the
low-resolution stage's segmentation of every training case as extra input channels, read from
``<lowres fold>/../predicted_next_stage/<stage>/`` (written by the low-resolution folds' validation). Unlabeled scans
get theirs the same way: the low-resolution model of the same fold predicts every preprocessed unlabeled scan, and
nnU-Net's own ``resample_and_save`` brings the segmentation to the next stage's preprocessed shape, next to the
labeled cases' folder in ``predicted_next_stage_unlabeled/<stage>/``. Cases already there are kept; each is written
under a temporary name and renamed, so an interrupted run never leaves half a file.
"""
import os
from os.path import join
from typing import Optional

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from tqdm import tqdm

from nnunetv2.inference.export_prediction import resample_and_save
from nnunetv2.paths import nnUNet_preprocessed, nnUNet_results
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunetv2_m3hl.unlabeled import UnlabeledDataError, preprocess_unlabeled, unlabeled_identifiers

UNLABELED_NEXT_STAGE_FOLDER = 'predicted_next_stage_unlabeled'
_TMP_PREFIX = '.m3hl-tmp-'


def previous_stage_folder(dataset_name: str, trainer_name: str, plans_name: str, previous_stage: str) -> str:
    """The previous stage's output folder, as nnU-Net's cascade looks for it (the same trainer class)."""
    return join(nnUNet_results, dataset_name, f'{trainer_name}__{plans_name}__{previous_stage}')


def unlabeled_segs_folder(previous_stage_output: str, stage: str) -> str:
    return join(previous_stage_output, UNLABELED_NEXT_STAGE_FOLDER, stage)


def predict_unlabeled_for_next_stage(dataset_name_or_id, stage: str, fold: int, trainer_name: str,
                                     plans_identifier: str = 'nnUNetPlans', device: Optional[torch.device] = None,
                                     num_processes: int = 2, verbose: bool = True) -> str:
    """Segment every unlabeled scan with the previous stage's model of ``fold`` for the cascade stage ``stage``;
    returns the folder the stage's unlabeled loader reads them from. Raises UnlabeledDataError naming the command to
    run when that model does not exist."""
    dataset_name = maybe_convert_to_dataset_name(dataset_name_or_id)
    plans_manager = PlansManager(load_json(join(nnUNet_preprocessed, dataset_name, plans_identifier + '.json')))
    stage_manager = plans_manager.get_configuration(stage)
    previous = stage_manager.previous_stage_name
    if previous is None:
        raise UnlabeledDataError(f"configuration '{stage}' is not a cascade stage: it has no previous stage")
    previous_output = previous_stage_folder(dataset_name, trainer_name, plans_manager.plans_name, previous)
    checkpoint = join(previous_output, f'fold_{fold}', 'checkpoint_final.pth')
    if not os.path.isfile(checkpoint):
        raise UnlabeledDataError(
            f"{checkpoint} does not exist: the cascade stage {stage} reads the {previous} stage's segmentations of "
            f"the labeled and the unlabeled scans. Train that stage first with the same trainer, every fold: "
            f"nnUNetv2_train {dataset_name_or_id} {previous} FOLD -tr {trainer_name} (FOLD = 0 .. 4), then start "
            f"{stage} again.")
    previous_folder = preprocess_unlabeled(dataset_name, previous, plans_identifier, num_processes, verbose)
    stage_folder = preprocess_unlabeled(dataset_name, stage, plans_identifier, num_processes, verbose)
    out = unlabeled_segs_folder(previous_output, stage)
    os.makedirs(out, exist_ok=True)
    todo = [i for i in unlabeled_identifiers(stage_folder) if not os.path.isfile(join(out, i + '.b2nd'))]
    if todo:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        device = device or torch.device('cuda' if torch.cuda.is_available() else 'cpu')
        predictor = nnUNetPredictor(device=device, verbose=False, verbose_preprocessing=False, allow_tqdm=False,
                                    perform_everything_on_device=device.type == 'cuda')
        predictor.initialize_from_trained_model_folder(previous_output, use_folds=(fold,))
        previous_manager = plans_manager.get_configuration(previous)
        dataset_json = load_json(join(previous_output, 'dataset.json'))
        for identifier in tqdm(todo, desc=f'{previous} segmentations of the unlabeled scans for {stage}',
                               disable=not verbose):
            data, _, _, properties = nnUNetDatasetBlosc2(previous_folder, [identifier]).load_case(identifier)
            target, _, _, _ = nnUNetDatasetBlosc2(stage_folder, [identifier]).load_case(identifier)
            logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(np.asarray(data)))
            tmp = join(out, f'{_TMP_PREFIX}{os.getpid()}-{identifier}')
            resample_and_save(logits, list(target.shape[1:]), tmp, plans_manager, previous_manager, properties,
                              dataset_json, num_processes, nnUNetDatasetBlosc2)
            os.replace(tmp + '.b2nd', join(out, identifier + '.b2nd'))
    return out


def unlabeled_cascade_folder(trainer) -> Optional[str]:
    """For a trainer of a cascade stage, the folder of its unlabeled scans' previous-stage segmentations."""
    previous = trainer.configuration_manager.previous_stage_name
    if previous is None:
        return None
    output = previous_stage_folder(trainer.plans_manager.dataset_name, trainer.__class__.__name__,
                                   trainer.plans_manager.plans_name, previous)
    return unlabeled_segs_folder(output, trainer.configuration_name)

