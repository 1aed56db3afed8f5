"""Region-based datasets (``regions_class_order``, as BraTS and KiTS): the region pseudo-labels, their cleanup, the
mix loss against values computed by hand, and a tiny BraTS-like dataset (4 MRI sequences, a file each, 3 nested
regions) that plans, trains M3HL and predicts with plain nnU-Net's loading of the checkpoint."""
import json
import math
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import ONE_PROCESS, run_cli
from dataset_conversion.synthetic import make_synthetic_dataset
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from nnunetv2_m3hl.label_forms import LabelMaps, RegionMaps, label_form_for
from nnunetv2_m3hl.losses import RegionWeightedDiceBCE
from nnunetv2_m3hl.overlap import PseudoLabelCleanup
from nnunetv2_m3hl.teacher import region_pseudo_labels

# the phantoms' cavity (1) lies inside the ring (2), the crescent (3) beside it: nested regions as in BraTS
REGION_LABELS = {'background': 0, 'heart': [1, 2, 3], 'ring_and_cavity': [1, 2], 'cavity': 1}
REGIONS_CLASS_ORDER = [3, 2, 1]
REGIONS_ID = 907


def region_manager(ignore: bool = False) -> LabelManager:
    labels = dict(REGION_LABELS, **({'ignore': 4} if ignore else {}))
    return LabelManager(labels, REGIONS_CLASS_ORDER)


def test_the_label_form_follows_the_dataset():
    assert isinstance(label_form_for(region_manager()), RegionMaps)
    assert isinstance(label_form_for(LabelManager({'background': 0, 'a': 1}, None)), LabelMaps)
    assert label_form_for(region_manager()).num_outputs == 3


def test_region_pseudo_labels_are_each_sigmoid_above_one_half():
    logits = torch.tensor([[[-1.0, 0.0, 0.01, 3.0]], [[2.0, -0.5, 0.0, 1.0]]]).view(1, 2, 1, 4)
    expected = torch.tensor([[[0, 0, 1, 1]], [[1, 0, 0, 1]]]).view(1, 2, 1, 4)
    assert torch.equal(region_pseudo_labels(logits), expected)
    assert torch.equal(torch.sigmoid(logits) > 0.5, expected.bool())


def test_the_cleanup_keeps_the_largest_component_of_every_region():
    maps = torch.tensor([[1, 1, 0, 1, 0, 0, 0, 0],
                         [0, 0, 0, 1, 1, 1, 0, 1]]).view(1, 2, 1, 8)
    logits = torch.where(maps.bool(), 4.0, -4.0)
    pseudo = RegionMaps(region_manager()).start_pseudo_labels(logits, PseudoLabelCleanup('sync')).result()
    assert pseudo.shape == (1, 2, 1, 8)
    assert pseudo[0, 0, 0].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert pseudo[0, 1, 0].tolist() == [0, 0, 0, 1, 1, 1, 0, 0]
    # without the cleanup the maps stay as the sigmoid gave them
    assert torch.equal(RegionMaps(region_manager()).start_pseudo_labels(logits, None).result(), maps)


def test_mixed_region_targets_take_the_pseudo_label_where_the_voxel_came_from_the_unlabeled_image():
    y = torch.tensor([[1, 1, 0, 0], [0, 1, 0, 0]]).view(1, 2, 1, 4)
    pseudo = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 1]]).view(1, 2, 1, 4)
    from_unlabeled = torch.tensor([0, 1, 0, 1]).view(1, 1, 1, 4)
    mixed = RegionMaps(region_manager()).mixed_targets(y, pseudo, from_unlabeled)
    assert mixed[0, :, 0].tolist() == [[1, 0, 0, 1], [0, 0, 0, 1]]
    # with an ignore label nnU-Net's targets carry its channel last; a pseudo-labeled voxel is never ignored
    y_ignore = torch.cat((y[:, :1], torch.tensor([1, 1, 0, 0]).view(1, 1, 1, 4)), dim=1)
    mixed = RegionMaps(region_manager(ignore=True)).mixed_targets(y_ignore, pseudo[:, :1], from_unlabeled)
    assert mixed[0, :, 0].tolist() == [[1, 0, 0, 1], [1, 0, 0, 0]]


def test_region_mix_loss_by_hand():
    """One region, four voxels: the labeled two with sigmoid 0.5 against targets 1, 0; the pseudo-labeled two with
    sigmoid 0.75 and 0.25 against 1, 0."""
    logits = torch.tensor([0.0, 0.0, math.log(3), -math.log(3)]).view(1, 1, 1, 4)
    target = torch.tensor([1, 0, 1, 0]).view(1, 1, 1, 4)
    from_unlabeled = torch.tensor([0, 0, 1, 1]).view(1, 1, 1, 4)
    # labeled: Dice 2 * 0.5 / (1 + 1) = 0.5, BCE ln 2; pseudo-labeled: Dice 2 * 0.75 / 2 = 0.75, BCE -ln 0.75
    labeled = (1 - 0.5) + math.log(2)
    pseudo = (1 - 0.75) - math.log(0.75)
    loss = RegionWeightedDiceBCE(u_weight=0.5)(logits, target, from_unlabeled)
    assert float(loss) == pytest.approx(labeled + 0.5 * pseudo, abs=1e-5)
    # the second labeled voxel ignored: Dice 2 * 0.5 / (0.5 + 1), BCE ln 2 on the first alone
    ignore = torch.tensor([0, 1, 0, 0]).view(1, 1, 1, 4)
    loss = RegionWeightedDiceBCE(0.5, has_ignore_channel=True)(logits, torch.cat((target, ignore), 1), from_unlabeled)
    assert float(loss) == pytest.approx((1 - 1 / 1.5) + math.log(2) + 0.5 * pseudo, abs=1e-5)
    # gradients reach the logits of counted voxels only
    logits.requires_grad_(True)
    RegionWeightedDiceBCE(0.5, has_ignore_channel=True)(logits, torch.cat((target, ignore), 1), from_unlabeled).backward()
    assert logits.grad[0, 0, 0, 1] == 0 and (logits.grad[0, 0, 0, [0, 2, 3]] != 0).all()


def test_confidence_gates_are_refused_for_regions():
    with pytest.raises(ValueError, match='label maps only'):
        RegionMaps(region_manager()).mix_loss(0.5, confidence_gated=True)


@pytest.fixture(scope='module')
def planned_regions(nnunet_env):
    raw = make_synthetic_dataset(str(nnunet_env / 'raw'), REGIONS_ID, n_labeled=3, n_unlabeled=2, n_test=1,
                                 shape=(24, 24, 24), channels=4, name='BraTSLikePhantom')
    dataset_json = json.load(open(os.path.join(raw, 'dataset.json')))
    dataset_json.update(labels=REGION_LABELS, regions_class_order=REGIONS_CLASS_ORDER,
                        channel_names={'0': 'T1', '1': 'T1ce', '2': 'T2', '3': 'FLAIR'})
    with open(os.path.join(raw, 'dataset.json'), 'w') as f:
        json.dump(dataset_json, f)
    run_cli(['nnUNetv2_plan_and_preprocess', '-d', REGIONS_ID, '-c', '3d_fullres', *ONE_PROCESS])
    name = os.path.basename(raw)
    split = [{'train': ['lab_000', 'lab_001'], 'val': ['lab_002']}]
    (nnunet_env / 'preprocessed' / name / 'splits_final.json').write_text(json.dumps(split))
    return name


def test_brats_like_dataset_trains_m3hl_and_predicts(nnunet_env, planned_regions, tmp_path):
    unlabeled = sorted(os.listdir(nnunet_env / 'raw' / planned_regions / 'imagesUnlabeledTr'))
    assert unlabeled == [f'unl_00{i}_000{c}.nii.gz' for i in range(2) for c in range(4)]  # a file per sequence
    run_cli(['nnUNetv2_train', REGIONS_ID, '3d_fullres', 0, '-tr', 'M3HLTrainer_test', '-device', 'cpu'])
    fold = nnunet_env / 'results' / planned_regions / 'M3HLTrainer_test__nnUNetPlans__3d_fullres' / 'fold_0'
    log = open(sorted(fold.glob('training_log_*.txt'))[-1]).read()
    assert 'mix_loss nan' not in log and 'L_high' in log
    assert (fold / 'mixed_sample_epoch_0000.png').is_file()
    # the checkpoint names nnUNetTrainer: plain nnU-Net builds the network and predicts the regions
    run_cli(['nnUNetv2_predict', '-i', nnunet_env / 'raw' / planned_regions / 'imagesTs', '-o', tmp_path / 'pred',
             '-d', REGIONS_ID, '-c', '3d_fullres', '-f', 0, '-tr', 'M3HLTrainer_test',
             '-chk', 'checkpoint_final_teacher.pth', '-device', 'cpu', '-npp', 1, '-nps', 1])
    prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / 'pred' / 'test_000.nii.gz')))
    assert prediction.shape == (24, 24, 24) and set(np.unique(prediction)) <= {0, 1, 2, 3}
