"""Sparse annotations (nnU-Net's ``ignore`` label: scribbles, partly annotated images) with M3HL: a tiny dataset
whose labeled cases are annotated on a few rows and columns only trains end to end, ignored voxels contribute
nothing to the loss of a step, and the teacher never predicts the ignore class."""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import ONE_PROCESS, run_cli
from test_trainer_step import batches
from dataset_conversion.synthetic import LABELS, make_synthetic_dataset
from nnunetv2.run.run_training import get_trainer_from_args
from nnunetv2_m3hl.unlabeled import preprocess_unlabeled

SPARSE_ID = 906
IGNORE = max(LABELS.values()) + 1


def sparsify(label_file: str) -> None:
    """Keep the annotation on every 8th row and column (a scribble grid); everything else becomes ``ignore``."""
    image = sitk.ReadImage(label_file)
    labels = sitk.GetArrayFromImage(image)
    annotated = np.zeros(labels.shape, dtype=bool)
    annotated[..., ::8, :] = True
    annotated[..., :, ::8] = True
    sparse = sitk.GetImageFromArray(np.where(annotated, labels, IGNORE).astype(labels.dtype))
    sparse.CopyInformation(image)
    sitk.WriteImage(sparse, label_file)


@pytest.fixture(scope='module')
def planned_sparse(nnunet_env):
    raw = make_synthetic_dataset(str(nnunet_env / 'raw'), SPARSE_ID, n_labeled=4, n_unlabeled=4, n_test=1,
                                 shape=(64, 64), name='SparsePhantom')
    for name in os.listdir(os.path.join(raw, 'labelsTr')):
        sparsify(os.path.join(raw, 'labelsTr', name))
    dataset_json = json.load(open(os.path.join(raw, 'dataset.json')))
    dataset_json['labels'] = dict(LABELS, ignore=IGNORE)
    with open(os.path.join(raw, 'dataset.json'), 'w') as f:
        json.dump(dataset_json, f)
    run_cli(['nnUNetv2_plan_and_preprocess', '-d', SPARSE_ID, '-c', '2d', *ONE_PROCESS, '--verify_dataset_integrity'])
    name = os.path.basename(raw)
    split = [{'train': ['lab_000', 'lab_001', 'lab_002'], 'val': ['lab_003']}]
    (nnunet_env / 'preprocessed' / name / 'splits_final.json').write_text(json.dumps(split))
    return name


def test_ignored_voxels_contribute_nothing_and_the_teacher_never_predicts_ignore(nnunet_env, planned_sparse):
    torch.manual_seed(0)
    preprocess_unlabeled(SPARSE_ID, '2d', num_processes=1, verbose=False)
    trainer = get_trainer_from_args(str(SPARSE_ID), '2d', 0, 'M3HLTrainer_test', device=torch.device('cpu'))
    trainer.initialize()
    assert trainer.label_manager.ignore_label == IGNORE
    labeled, unlabeled = batches(trainer)
    assert (labeled['target'][0] == IGNORE).float().mean() > 0.5

    cleaning, _, _ = trainer.teacher_pass(unlabeled)
    pseudo = cleaning.result()
    assert int(pseudo.max()) < IGNORE
    assert trainer.teacher(unlabeled).shape[1] == trainer.label_manager.num_segmentation_heads == IGNORE

    seen = {}
    mix_loss = trainer.mix_loss

    def recording_mix_loss(output, targets, regions):
        for o in output:
            o.retain_grad()
        seen['output'], seen['targets'] = output, targets
        return mix_loss(output, targets, regions)
    trainer.mix_loss = recording_mix_loss
    out = trainer.m3hl_step(labeled['data'], labeled['target'], unlabeled)
    assert np.isfinite(out['loss'])
    checked = 0
    for output, target in zip(seen['output'], seen['targets']):
        if output.grad is None:  # a deep-supervision output with weight 0
            continue
        ignored = (target == IGNORE).expand_as(output.grad)
        # the logits are the network's last layer: the feature terms do not reach them, the mix loss alone does
        assert ignored.any() and torch.count_nonzero(output.grad[ignored]) == 0
        assert torch.count_nonzero(output.grad[~ignored]) > 0
        checked += 1
    assert checked >= 2


def test_sparse_dataset_trains_and_predicts(nnunet_env, planned_sparse, tmp_path):
    run_cli(['nnUNetv2_train', SPARSE_ID, '2d', 0, '-tr', 'M3HLTrainer_test', '-device', 'cpu'])
    fold = nnunet_env / 'results' / planned_sparse / 'M3HLTrainer_test__nnUNetPlans__2d' / 'fold_0'
    assert (fold / 'checkpoint_final.pth').is_file() and (fold / 'checkpoint_final_teacher.pth').is_file()
    log = open(sorted(fold.glob('training_log_*.txt'))[-1]).read()
    assert 'mix_loss nan' not in log
    run_cli(['nnUNetv2_predict', '-i', nnunet_env / 'raw' / planned_sparse / 'imagesTs', '-o', tmp_path / 'pred',
             '-d', SPARSE_ID, '-c', '2d', '-f', 0, '-tr', 'M3HLTrainer_test', '-chk', 'checkpoint_final_teacher.pth',
             '-device', 'cpu', '-npp', 1, '-nps', 1])
    prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / 'pred' / 'test_000.nii.gz')))
    assert set(np.unique(prediction)) <= set(LABELS.values())
