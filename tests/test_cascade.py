"""The cascade's second stage with unlabeled scans, end to end on a tiny 3D dataset: refused with the command to run
while the low-resolution stage is missing; then the low-resolution stage trains, M3HL's cascade stage segments the
unlabeled scans with it at its start (their extra input channels, as nnU-Net makes them for the labeled cases),
trains, and predicts the test scan from the low-resolution stage's prediction."""
import copy
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import ONE_PROCESS, run_cli
from dataset_conversion.synthetic import make_synthetic_dataset

CASCADE_ID = 908


@pytest.fixture(scope='module')
def planned_cascade(nnunet_env):
    """nnU-Net plans a cascade only for scans much larger than a patch; here the two stages are written into the plans
    as nnU-Net's planner writes them (a low-resolution configuration pointing to the cascade's full-resolution one),
    at the same spacing so that the tiny scans fit both networks."""
    raw = make_synthetic_dataset(str(nnunet_env / 'raw'), CASCADE_ID, n_labeled=3, n_unlabeled=2, n_test=1,
                                 shape=(32, 32, 32), name='CascadePhantom')
    name = os.path.basename(raw)
    run_cli(['nnUNetv2_plan_and_preprocess', '-d', CASCADE_ID, '-c', '3d_fullres', *ONE_PROCESS])
    plans_file = nnunet_env / 'preprocessed' / name / 'nnUNetPlans.json'
    plans = json.loads(plans_file.read_text())
    lowres = copy.deepcopy(plans['configurations']['3d_fullres'])
    lowres.update(data_identifier='nnUNetPlans_3d_lowres', next_stage='3d_cascade_fullres')
    plans['configurations']['3d_lowres'] = lowres
    plans['configurations']['3d_cascade_fullres'] = {'inherits_from': '3d_fullres', 'previous_stage': '3d_lowres'}
    plans_file.write_text(json.dumps(plans, indent=1))
    run_cli(['nnUNetv2_preprocess', '-d', CASCADE_ID, '-c', '3d_lowres', '-np', 2])
    # every labeled case in fold 0's validation, so that the low-resolution fold segments all of them for the cascade
    cases = ['lab_000', 'lab_001', 'lab_002']
    (nnunet_env / 'preprocessed' / name / 'splits_final.json').write_text(json.dumps([{'train': cases, 'val': cases}]))
    return name


def test_cascade_stage_trains_with_the_unlabeled_scans_previous_stage_segmentations(nnunet_env, planned_cascade,
                                                                                  tmp_path):
    results = nnunet_env / 'results' / planned_cascade
    refused = run_cli(['nnUNetv2_train', CASCADE_ID, '3d_cascade_fullres', 0, '-tr', 'M3HLTrainer_test', '-device',
                       'cpu'], check=False)
    assert refused.returncode != 0
    assert f'nnUNetv2_train {planned_cascade} 3d_lowres FOLD -tr M3HLTrainer_test' in refused.stdout + refused.stderr

    run_cli(['nnUNetv2_train', CASCADE_ID, '3d_lowres', 0, '-tr', 'M3HLTrainer_test', '-device', 'cpu'])
    lowres = results / 'M3HLTrainer_test__nnUNetPlans__3d_lowres'
    assert sorted(os.listdir(lowres / 'predicted_next_stage' / '3d_cascade_fullres')) == \
        ['lab_000.b2nd', 'lab_001.b2nd', 'lab_002.b2nd']

    run_cli(['nnUNetv2_train', CASCADE_ID, '3d_cascade_fullres', 0, '-tr', 'M3HLTrainer_test', '-device', 'cpu'])
    assert sorted(os.listdir(lowres / 'predicted_next_stage_unlabeled' / '3d_cascade_fullres')) == \
        ['unl_000.b2nd', 'unl_001.b2nd']
    fold = results / 'M3HLTrainer_test__nnUNetPlans__3d_cascade_fullres' / 'fold_0'
    log = open(sorted(fold.glob('training_log_*.txt'))[-1]).read()
    assert 'mix_loss nan' not in log and (fold / 'checkpoint_final_teacher.pth').is_file()
    # the command does the same ahead of time and finds everything done
    again = run_cli(['nnUNetv2_m3hl_predict_unlabeled_next_stage', '-d', CASCADE_ID, '-f', 0, '-tr',
                     'M3HLTrainer_test', '-device', 'cpu'])
    assert again.stdout.strip().endswith(os.path.join('predicted_next_stage_unlabeled', '3d_cascade_fullres'))

    images = nnunet_env / 'raw' / planned_cascade / 'imagesTs'
    run_cli(['nnUNetv2_predict', '-i', images, '-o', tmp_path / 'lowres', '-d', CASCADE_ID, '-c', '3d_lowres', '-f', 0,
             '-tr', 'M3HLTrainer_test', '-device', 'cpu', '-npp', 1, '-nps', 1])
    run_cli(['nnUNetv2_predict', '-i', images, '-o', tmp_path / 'cascade', '-d', CASCADE_ID, '-c',
             '3d_cascade_fullres', '-f', 0, '-tr', 'M3HLTrainer_test', '-prev_stage_predictions', tmp_path / 'lowres',
             '-device', 'cpu', '-npp', 1, '-nps', 1])
    prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / 'cascade' / 'test_000.nii.gz')))
    assert prediction.shape == (32, 32, 32) and set(np.unique(prediction)) <= {0, 1, 2, 3}
