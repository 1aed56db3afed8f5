"""``-pretrained_weights`` through nnU-Net's own entry path: what student and teacher hold at the first step."""
import numpy as np
import torch

from nnunetv2.run.run_training import get_trainer_from_args, run_training
from nnunetv2_m3hl.pretrained import whole_model_state
from nnunetv2_m3hl.unlabeled import preprocess_unlabeled


def pretrained_checkpoint(path, other_labels: bool = False) -> dict:
    """An nnUNetTrainer checkpoint of the tiny 2D dataset with weights far from any fresh initialisation."""
    torch.manual_seed(123)
    trainer = get_trainer_from_args('901', '2d', 0, 'nnUNetTrainer', device=torch.device('cpu'))
    trainer.initialize()
    with torch.no_grad():
        for p in trainer.network.parameters():
            p.add_(torch.randn_like(p))
    trainer.save_checkpoint(str(path))
    checkpoint = torch.load(str(path), weights_only=False)
    if other_labels:
        # a model of another task: one more class, so other heads
        checkpoint['init_args']['dataset_json']['labels'] = {**checkpoint['init_args']['dataset_json']['labels'],
                                                             'extra': 4}
        for key, value in list(checkpoint['network_weights'].items()):
            if '.seg_layers.' in key:
                checkpoint['network_weights'][key] = torch.randn((value.shape[0] + 1, *value.shape[1:]))
        torch.save(checkpoint, str(path))
    return checkpoint['network_weights']


def train_from(trainer_name, weights_file):
    preprocess_unlabeled(901, '2d', num_processes=1, verbose=False)
    run_training('901', '2d', 0, trainer_name, pretrained_weights=str(weights_file), device=torch.device('cpu'))


def assert_equal_states(actual: dict, expected: dict, skip_heads: bool = False):
    for key, value in expected.items():
        if skip_heads and '.seg_layers.' in key:
            continue
        assert torch.equal(actual[key], value.to(actual[key].dtype)), key


def test_same_labels_start_student_and_teacher_from_the_whole_model(nnunet_env, planned_2d, tmp_path,
                                                                     first_step_states):
    weights = pretrained_checkpoint(tmp_path / 'pretrained.pth')
    train_from('M3HLTrainer_test_pretrained', tmp_path / 'pretrained.pth')
    assert_equal_states(first_step_states['student'], weights)   # heads included
    assert_equal_states(first_step_states['teacher'], weights)
    logs = (nnunet_env / 'results').rglob('M3HLTrainer_test_pretrained__*/fold_0/training_log_*.txt')
    log = open(sorted(logs)[-1]).read()
    assert 'segmentation heads included' in log


def test_other_labels_keep_nnunets_transfer_and_copy_the_student(nnunet_env, planned_2d, tmp_path,
                                                                 first_step_states):
    weights = pretrained_checkpoint(tmp_path / 'other.pth', other_labels=True)
    train_from('M3HLTrainer_test_pretrained', tmp_path / 'other.pth')
    student, teacher = first_step_states['student'], first_step_states['teacher']
    assert_equal_states(student, weights, skip_heads=True)
    heads = [k for k in student if '.seg_layers.' in k]
    assert heads and all(student[k].shape != weights[k].shape for k in heads if k.endswith('weight'))
    assert_equal_states(teacher, student)


def test_a_whole_pretrained_model_skips_the_warmup(nnunet_env, planned_2d, tmp_path, first_step_states):
    weights = pretrained_checkpoint(tmp_path / 'pretrained.pth')
    train_from('M3HLTrainer_test_warmup', tmp_path / 'pretrained.pth')
    # that teacher is trained already: the first step mixes, although the variant warms up for half its epochs
    assert not first_step_states['warmup']
    assert not any(np.isnan(first_step_states['mix_losses']))
    assert_equal_states(first_step_states['student'], weights)
    assert_equal_states(first_step_states['teacher'], weights)
    fold = next((nnunet_env / 'results').rglob('M3HLTrainer_test_warmup__*/fold_0'))
    final = torch.load(str(fold / 'checkpoint_final.pth'), weights_only=False)
    assert final['m3hl']['warmup_ended_at'] == 0  # kept for --c


def test_other_labels_keep_the_warmup(nnunet_env, planned_2d, tmp_path, first_step_states):
    pretrained_checkpoint(tmp_path / 'other.pth', other_labels=True)
    train_from('M3HLTrainer_test_warmup', tmp_path / 'other.pth')
    assert first_step_states['warmup']


def test_whole_model_state_decisions():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1))
    state = net.state_dict()
    labels = {'background': 0, 'a': 1}
    same, reason = whole_model_state({'network_weights': state, 'init_args': {'dataset_json': {'labels': labels}}},
                                     state, labels)
    assert same is not None and reason == 'same labels'
    other, reason = whole_model_state({'network_weights': state,
                                       'init_args': {'dataset_json': {'labels': {'background': 0, 'b': 1}}}},
                                      state, labels)
    assert other is None and 'labels' in reason
    unknown, _ = whole_model_state({'network_weights': state}, state, labels)
    assert unknown is not None
    smaller = {k: v[:1] for k, v in state.items()}
    assert whole_model_state({'network_weights': smaller}, state, labels)[0] is None
