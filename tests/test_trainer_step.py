"""The trainer's step in-process on real nnU-Net batches of the tiny 2D dataset."""
import numpy as np
import pytest
import torch

from nnunetv2.run.run_training import get_trainer_from_args
from nnunetv2_m3hl.checkpointing import load_checkpoint_safely
from nnunetv2_m3hl.trainers import m3hl_trainer
from nnunetv2_m3hl.unlabeled import preprocess_unlabeled


def make_trainer(planned_2d, name='M3HLTrainer_test'):
    torch.manual_seed(0)
    np.random.seed(0)
    preprocess_unlabeled(901, '2d', num_processes=1, verbose=False)
    trainer = get_trainer_from_args('901', '2d', 0, name, device=torch.device('cpu'))
    trainer.initialize()
    return trainer


def batches(trainer):
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    labeled = next(trainer.dataloader_train)
    unlabeled = next(trainer.dataloader_unlabeled)['data']
    for loader in (trainer.dataloader_train, trainer.dataloader_val, trainer.dataloader_unlabeled):
        if hasattr(loader, '_finish'):
            loader._finish()
    return labeled, unlabeled


def test_loss_falls_and_teacher_follows(nnunet_env, planned_2d):
    trainer = make_trainer(planned_2d)
    labeled, unlabeled = batches(trainer)
    assert unlabeled.shape == labeled['data'].shape
    teacher_before = [p.clone() for p in trainer.teacher.parameters()]
    losses = [float(trainer.m3hl_step(labeled['data'], labeled['target'], unlabeled)['loss']) for _ in range(30)]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    # every parameter the student trained moved the teacher (unused deep-supervision heads stay)
    student = dict(trainer.network.named_parameters())
    for (name, t_now), t_before in zip(trainer.teacher.named_parameters(), teacher_before):
        if not torch.equal(student[name], t_before):
            assert not torch.equal(t_now, t_before), name


@pytest.mark.parametrize('n_labeled,n_unlabeled', [(1, 1), (3, 3), (2, 3)])
def test_any_batch_size_works(nnunet_env, planned_2d, n_labeled, n_unlabeled):
    trainer = make_trainer(planned_2d)
    labeled, unlabeled = batches(trainer)
    reps_l = -(-n_labeled // labeled['data'].shape[0])
    reps_u = -(-n_unlabeled // unlabeled.shape[0])
    x_l = labeled['data'].repeat(reps_l, 1, 1, 1)[:n_labeled]
    y_l = [t.repeat(reps_l, 1, 1, 1)[:n_labeled] for t in labeled['target']]
    x_u = unlabeled.repeat(reps_u, 1, 1, 1)[:n_unlabeled]
    out = trainer.m3hl_step(x_l, y_l, x_u)
    assert np.isfinite(out['loss']) and out['skipped'] == 0


def test_nonfinite_loss_skips_and_then_stops(nnunet_env, planned_2d):
    trainer = make_trainer(planned_2d)
    labeled, unlabeled = batches(trainer)
    trainer.max_consecutive_nonfinite = 3
    before = [p.clone() for p in trainer.network.parameters()]
    bad = labeled['data'].clone()
    bad[:] = float('nan')
    out = trainer.m3hl_step(bad, labeled['target'], unlabeled)
    assert out['skipped'] == 1
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.network.parameters()))
    trainer.m3hl_step(labeled['data'], labeled['target'], unlabeled)  # a good step resets the count
    trainer.m3hl_step(bad, labeled['target'], unlabeled)
    trainer.m3hl_step(bad, labeled['target'], unlabeled)
    with pytest.raises(RuntimeError, match='consecutive steps had a non-finite loss'):
        trainer.m3hl_step(bad, labeled['target'], unlabeled)


def test_checkpoint_round_trip_restores_teacher_bit_for_bit(nnunet_env, planned_2d, tmp_path):
    trainer = make_trainer(planned_2d)
    labeled, unlabeled = batches(trainer)
    for _ in range(2):
        trainer.m3hl_step(labeled['data'], labeled['target'], unlabeled)
    path = str(tmp_path / 'checkpoint_latest.pth')
    trainer.save_checkpoint(path)
    saved = load_checkpoint_safely(path)
    other = make_trainer(planned_2d)
    other.load_checkpoint(path)
    for k, v in other.teacher.state_dict().items():
        assert torch.equal(v, saved['m3hl']['teacher_weights'][k])
    for k, v in other.network.state_dict().items():
        assert torch.equal(v, saved['network_weights'][k])
    assert other.optimizer.state_dict()['state'].keys() == trainer.optimizer.state_dict()['state'].keys()


@pytest.mark.parametrize('deep_supervision', [True, False])
def test_residual_encoder_plans_with_and_without_deep_supervision(nnunet_env, planned_2d, deep_supervision):
    from conftest import run_cli
    plans = 'nnUNetResEncUNetMPlans'
    if not (nnunet_env / 'preprocessed' / planned_2d / f'{plans}_2d').is_dir():
        run_cli(['nnUNetv2_plan_experiment', '-d', 901, '-pl', 'nnUNetPlannerResEncM'])
        run_cli(['nnUNetv2_preprocess', '-d', 901, '-plans_name', plans, '-c', '2d', '-np', 1])
    preprocess_unlabeled(901, '2d', plans, num_processes=1, verbose=False)
    trainer = get_trainer_from_args('901', '2d', 0, 'M3HLTrainer_test', plans_identifier=plans,
                                    device=torch.device('cpu'))
    trainer.enable_deep_supervision = deep_supervision
    trainer.initialize()
    assert type(trainer.network).__name__ == 'ResidualEncoderUNet'
    labeled, unlabeled = batches(trainer)
    out = trainer.m3hl_step(labeled['data'], labeled['target'], unlabeled)
    assert np.isfinite(out['loss']) and out['high_loss'] > 0 and out['low_loss'] > 0


def test_supervised_warmup_then_teacher_starts_from_the_student(nnunet_env, planned_2d):
    trainer = make_trainer(planned_2d)
    labeled, unlabeled = batches(trainer)
    trainer.num_epochs = 4
    trainer.supervised_warmup_fraction = 0.25
    assert trainer.supervised_warmup_epochs == 1
    teacher_before = [p.clone() for p in trainer.teacher.parameters()]
    student_before = [p.clone() for p in trainer.network.parameters()]
    trainer.dataloader_unlabeled = None  # the warm-up must not touch unlabeled data
    trainer.current_epoch = 0
    trainer.on_train_epoch_start()
    out = trainer.train_step(labeled)
    assert np.isfinite(out['loss']) and np.isnan(out['mix_loss']) and np.isnan(out['pseudo_fg'])
    assert not all(torch.equal(a, b) for a, b in zip(student_before, trainer.network.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, trainer.teacher.parameters()))

    trainer.current_epoch = 1
    trainer.on_train_epoch_start()
    student = trainer.network.state_dict()
    assert all(torch.equal(v, student[k]) for k, v in trainer.teacher.state_dict().items())
    trainer.dataloader_unlabeled = iter([{'data': unlabeled}])
    out = trainer.train_step(labeled)
    assert np.isfinite(out['mix_loss']) and np.isfinite(out['high_loss'])


def test_teacher_is_compiled_with_the_student_and_follows_the_ema(nnunet_env, planned_2d, monkeypatch):
    from nnunetv2_m3hl.features import is_compiled, unwrap_network
    from nnunetv2_m3hl.teacher import ema_update
    from nnunetv2_m3hl.trainers.m3hl_trainer import M3HLTrainer
    # as on CUDA, where nnU-Net compiles the student by default
    monkeypatch.setattr(M3HLTrainer, '_do_i_compile', lambda self: True)
    trainer = make_trainer(planned_2d)
    assert is_compiled(trainer.network) and is_compiled(trainer.teacher_network)
    assert unwrap_network(trainer.teacher_network) is trainer.teacher
    _, unlabeled = batches(trainer)
    compiled = trainer.teacher_network

    def teacher_outputs(network):
        trainer.teacher_network = network
        cleaning, high, low = trainer.teacher_pass(unlabeled)
        return cleaning.result(), high, low

    def assert_same(a, b):
        assert (a[0] == b[0]).float().mean() > 0.99
        for x, y in zip(a[1:], b[1:]):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)

    before = teacher_outputs(compiled)
    assert_same(before, teacher_outputs(trainer.teacher))
    # the compiled teacher must see in-place updates of the teacher's weights, not constants of its first call
    student = unwrap_network(trainer.network)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.5 * torch.randn_like(p))
    ema_update(trainer.teacher, student, 0.5)
    after = teacher_outputs(compiled)
    assert_same(after, teacher_outputs(trainer.teacher))
    assert (after[2] - before[2]).abs().max() > 1e-2


def test_confidence_gate_leaves_uncertain_voxels_out_and_logs_the_kept_share(nnunet_env, planned_2d):
    trainer = make_trainer(planned_2d)
    labeled, unlabeled = batches(trainer)
    trainer.pseudo_label_confidence_threshold = 0.999999  # an untrained teacher is confident nowhere
    trainer.region_loss.leave_out_negative = True
    out = trainer.m3hl_step(labeled['data'], labeled['target'], unlabeled)
    assert np.isfinite(out['loss']) and out['kept_share'].shape == (trainer.label_manager.num_segmentation_heads,)
    assert np.nanmax(out['kept_share']) < 0.5
    # nothing confident: the pseudo-labeled region adds nothing, so the mix loss is the labeled region's alone
    gated = trainer.m3hl_step(labeled['data'], labeled['target'], unlabeled)
    trainer.pseudo_label_confidence_threshold = 0.0
    kept_all = trainer.m3hl_step(labeled['data'], labeled['target'], unlabeled)
    assert np.allclose(kept_all['kept_share'][np.isfinite(kept_all['kept_share'])], 1.0)
    assert float(gated['mix_loss']) != float(kept_all['mix_loss'])
    trainer.on_train_epoch_end([out, gated, kept_all])
    assert len(trainer.logger.get_value('pseudo_kept_share', -1)) == trainer.label_manager.num_segmentation_heads


def test_the_stored_trainer_name_is_one_plain_nnunet_resolves(nnunet_env, planned_2d, tmp_path):
    from nnunetv2_m3hl.trainers.m3hl_trainer import M3HLTrainer
    from nnunetv2_m3hl.trainers.bcp_trainers import BCPTrainer
    assert M3HLTrainer.inference_trainer_name() == BCPTrainer.inference_trainer_name() == 'nnUNetTrainer'

    class OwnNetwork(M3HLTrainer):
        @staticmethod
        def build_network_architecture(*args, **kwargs):
            raise NotImplementedError
    assert OwnNetwork.inference_trainer_name() == 'OwnNetwork'
    trainer = make_trainer(planned_2d)
    trainer.output_folder = str(tmp_path)
    trainer.save_checkpoint(str(tmp_path / 'checkpoint_final.pth'))
    for name in ('checkpoint_final.pth', 'checkpoint_final_teacher.pth'):
        saved = load_checkpoint_safely(str(tmp_path / name))
        assert saved['trainer_name'] == 'nnUNetTrainer' and saved['m3hl']['trainer_name'] == 'M3HLTrainer_test'
    # the stored name changes nothing for --c: the checkpoint loads into the M3HL trainer with its teacher
    trainer.load_checkpoint(str(tmp_path / 'checkpoint_final.pth'))


def test_with_the_weak_view_the_teacher_sees_the_weak_half_and_the_student_mixes_the_strong_one(nnunet_env,
                                                                                                  planned_2d):
    trainer = make_trainer(planned_2d)
    trainer.teacher_sees_weak_view = True
    assert trainer.m3hl_settings()['teacher_sees_weak_view'] is True
    labeled, unlabeled = batches(trainer)
    channels = labeled['data'].shape[1]
    assert unlabeled.shape[1] == 2 * channels
    strong, weak = unlabeled[:, :channels], unlabeled[:, channels:]
    seen = {}
    teacher_pass, mix_images = trainer.teacher_pass, m3hl_trainer.mix_images

    def record_teacher(x):
        seen['teacher'] = x.clone()
        return teacher_pass(x)

    def record_mix(x_l, x_u, masks):
        seen['student'] = x_u.clone()
        return mix_images(x_l, x_u, masks)
    trainer.teacher_pass = record_teacher
    m3hl_trainer.mix_images = record_mix
    try:
        trainer.warmup_ended_at = 0
        trainer.dataloader_unlabeled = iter([{'data': unlabeled}])
        out = trainer.train_step({'data': labeled['data'], 'target': labeled['target']})
    finally:
        m3hl_trainer.mix_images = mix_images
    assert np.isfinite(out['loss'])
    n = seen['teacher'].shape[0]
    assert torch.equal(seen['teacher'], weak[torch.arange(n) % weak.shape[0]])
    assert torch.equal(seen['student'], strong[torch.arange(n) % strong.shape[0]])
