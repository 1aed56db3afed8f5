"""BCP as published: the labeled copy-paste of stage 1, one box per batch in stage 2, and both stages through
nnU-Net's own entry path."""
import pytest
import torch

from nnunetv2.run.run_training import run_training
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2_m3hl.mixing import copy_paste_halves, make_box_masks, mutual_mix
from nnunetv2_m3hl.trainers.bcp_trainers import BCPTrainer
from nnunetv2_m3hl.unlabeled import preprocess_unlabeled


def test_copy_paste_halves_pastes_the_second_half_into_the_first():
    images = torch.arange(4.).view(4, 1, 1, 1).expand(4, 1, 6, 6).clone()
    labels = images.long()
    box = make_box_masks(1, (6, 6), 2 / 3)
    mixed, mixed_labels = copy_paste_halves(images, labels, 1 - box)
    assert mixed.shape == (2, 1, 6, 6)
    inside = box[0].bool()
    assert (mixed[0, 0][inside] == 2).all() and (mixed[0, 0][~inside] == 0).all()
    assert (mixed[1, 0][inside] == 3).all() and (mixed[1, 0][~inside] == 1).all()
    assert torch.equal(mixed_labels, mixed.long())
    single, _ = copy_paste_halves(images[:1], labels[:1], 1 - box)
    assert torch.equal(single, images[:1])


def test_self_training_uses_one_box_per_batch_in_both_directions():
    masks = BCPTrainer.make_masks(type('T', (), {'box_fraction': 2 / 3})(), 3, (9, 9), torch.device('cpu'))
    assert all(torch.equal(masks[0], m) for m in masks)
    box = (1 - masks[0]).bool()
    assert box.sum() == 36  # 6 x 6: two thirds of each axis
    x_l, x_u = torch.zeros(6, 1, 9, 9), torch.ones(6, 1, 9, 9)
    y = torch.zeros(6, 1, 9, 9, dtype=torch.long)
    mixed = mutual_mix(x_l, y, x_u, y + 1, masks)
    # even pairs: the labeled box pasted into the unlabeled patch; odd pairs: the unlabeled box into the labeled
    assert (mixed.images[0, 0][box] == 0).all() and (mixed.images[0, 0][~box] == 1).all()
    assert (mixed.images[1, 0][box] == 1).all() and (mixed.images[1, 0][~box] == 0).all()


def test_both_stages_take_place(nnunet_env, planned_2d, monkeypatch, first_step_states):
    preprocess_unlabeled(901, '2d', num_processes=1, verbose=False)
    stage1_batches = []
    original_step = nnUNetTrainer.train_step

    def recording_step(self, batch):
        stage1_batches.append((batch['data'].shape[0], self.batch_size))
        return original_step(self, batch)
    monkeypatch.setattr(nnUNetTrainer, 'train_step', recording_step)
    run_training('901', '2d', 0, 'BCPTrainer_pretrain_test', device=torch.device('cpu'))
    # stage 1 trains on pasted pairs: half as many images as the loader gives
    assert stage1_batches and all(n == size // 2 for n, size in stage1_batches)
    monkeypatch.setattr(nnUNetTrainer, 'train_step', original_step)
    best = next((nnunet_env / 'results').rglob('BCPTrainer_pretrain_test__nnUNetPlans__2d/fold_0/checkpoint_best.pth'))

    with pytest.raises(RuntimeError, match='-pretrained_weights'):
        run_training('901', '2d', 0, 'BCPTrainer_test', device=torch.device('cpu'))

    run_training('901', '2d', 0, 'BCPTrainer_test', pretrained_weights=str(best), device=torch.device('cpu'))
    seen = first_step_states
    pretrained = torch.load(str(best), weights_only=False)['network_weights']
    for key, value in pretrained.items():
        assert torch.equal(seen['student'][key], value) and torch.equal(seen['teacher'][key], value), key
    assert len(seen['mix_losses']) == 4 and all(v == v for v in seen['mix_losses'])
    assert next((nnunet_env / 'results').rglob('BCPTrainer_test__nnUNetPlans__2d/fold_0/checkpoint_final.pth'))
