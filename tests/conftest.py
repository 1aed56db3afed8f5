"""Shared fixtures: a private nnU-Net environment, tiny synthetic datasets planned once per session, and
short M3HL variants in a user folder on nnUNet_extTrainer (as a user's own subclasses would be)."""
import json
import os
import subprocess
import sys

import pytest

from dataset_conversion.synthetic import make_synthetic_dataset
from nnunetv2_m3hl import trainer_path

BIN = os.path.dirname(sys.executable)
# nnU-Net's planning spawns 8 fingerprint processes by default, each importing torch: on a 2-core machine that start-up
# is most of planning a tiny dataset; one process each halves it and plans the same
ONE_PROCESS = ['-np', 1, '-npfp', 1]

USER_TRAINERS = '''
import os
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2_m3hl.trainers.bcp_trainers import BCPTrainer, BCPTrainer_pretrain
from nnunetv2_m3hl.trainers.m3hl_trainer import M3HLTrainer
from nnunetv2_m3hl.trainers.m3hl_variants import M3HLTrainer_lateTeacher


class M3HLTrainer_test(M3HLTrainer):
    """Short runs for the tests, mixing from the first step (no warm-up), so that a one-epoch run trains the M3HL
    step; the epoch count can be raised from the environment to test --c."""
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.supervised_warmup_until_ready = False
        self.supervised_warmup_fraction = 0.0
        self.num_epochs = int(os.environ.get('M3HL_TEST_EPOCHS', 1))
        self.num_iterations_per_epoch = 4
        self.num_val_iterations_per_epoch = 1
        self.mixed_sample_png_every = 1
        self.save_every = 1  # a checkpoint_latest.pth after every epoch, for the kill-and-resume test


class NoPostTrainingValidation:
    """For the tests that look at training alone: nnU-Net's validation after training (tested on the other variants)
    starts a pool of processes that costs more than these runs."""
    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file('validation after training skipped by this test variant')


class M3HLTrainer_test_pretrained(NoPostTrainingValidation, M3HLTrainer_test):
    """Its own output folder, for the -pretrained_weights tests."""


class M3HLTrainer_test_warmup(NoPostTrainingValidation, M3HLTrainer_test):
    """Two epochs, the first supervised only."""
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2
        self.supervised_warmup_fraction = 0.5


class M3HLTrainer_test_readyWarmup(NoPostTrainingValidation, M3HLTrainer_test):
    """Four epochs (a warm-up cap of two); the warm-up ends as soon as the student is ready, here after the first
    (a floor of 0)."""
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 4
        self.supervised_warmup_until_ready = True
        self.warmup_ready_class_floor = 0.0
        self.warmup_ready_cap_fraction = 0.5


class M3HLTrainer_test_neverReady(NoPostTrainingValidation, M3HLTrainer_test):
    """Two epochs, a warm-up until ready without a cap and a floor no student reaches: the whole run is supervised."""
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2
        self.supervised_warmup_until_ready = True
        self.warmup_ready_class_floor = 2.0
        self.warmup_ready_patience = 100
        self.warmup_ready_cap_fraction = 1.0


class M3HLTrainer_test_lateTeacher(M3HLTrainer_lateTeacher):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        _short(self)


def _short(trainer):
    trainer.num_epochs = 1
    trainer.num_iterations_per_epoch = 4
    trainer.num_val_iterations_per_epoch = 1


class nnUNetTrainer_test(nnUNetTrainer):
    """The supervised baseline at the same short budget."""
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        _short(self)


class BCPTrainer_pretrain_test(BCPTrainer_pretrain):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        _short(self)


class BCPTrainer_test(BCPTrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        _short(self)
        self.mixed_sample_png_every = 0
'''


def run_cli(args, env=None, check=True, timeout=900):
    """Run a console command of the venv; return the completed process (output captured)."""
    cmd = [os.path.join(BIN, args[0])] + [str(a) for a in args[1:]]
    proc = subprocess.run(cmd, env=env or os.environ.copy(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope='session')
def nnunet_env(tmp_path_factory):
    root = tmp_path_factory.mktemp('nnunet')
    user_folder = root / 'user_trainers'
    user_folder.mkdir()
    (user_folder / 'my_trainers.py').write_text(USER_TRAINERS)
    env = {
        'nnUNet_raw': str(root / 'raw'), 'nnUNet_preprocessed': str(root / 'preprocessed'),
        'nnUNet_results': str(root / 'results'), 'nnUNet_n_proc_DA': '1', 'nnUNet_compile': 'f',
        'nnUNet_def_n_proc': '2', 'nnUNet_extTrainer': os.pathsep.join([trainer_path(), str(user_folder)]),
        'OMP_NUM_THREADS': '2',
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _plan(dataset_id: int, configuration: str, root, n_train: int):
    name = f'Dataset{dataset_id:03d}_M3HLPhantom'
    run_cli(['nnUNetv2_plan_and_preprocess', '-d', dataset_id, '-c', configuration, *ONE_PROCESS])
    # one small validation case keeps nnU-Net's post-training validation short
    split = [{'train': [f'lab_{i:03d}' for i in range(n_train)], 'val': [f'lab_{n_train:03d}']}]
    (root / 'preprocessed' / name / 'splits_final.json').write_text(json.dumps(split))
    return name


@pytest.fixture(scope='session')
def planned_2d(nnunet_env):
    make_synthetic_dataset(str(nnunet_env / 'raw'), 901, n_labeled=4, n_unlabeled=5, n_test=2, shape=(64, 64))
    return _plan(901, '2d', nnunet_env, 3)


@pytest.fixture(scope='session')
def planned_3d(nnunet_env):
    make_synthetic_dataset(str(nnunet_env / 'raw'), 902, n_labeled=3, n_unlabeled=3, n_test=1, shape=(32, 32, 32))
    return _plan(902, '3d_fullres', nnunet_env, 2)


@pytest.fixture
def first_step_states(monkeypatch):
    """Student and teacher weights when the first M3HL training step starts, whether that step was in the
    warm-up, and the mix loss of every step."""
    from nnunetv2_m3hl.features import unwrap_network
    from nnunetv2_m3hl.trainers.m3hl_trainer import M3HLTrainer
    seen = {'mix_losses': []}
    original = M3HLTrainer.train_step

    def recording_step(self, batch):
        if 'student' not in seen:
            seen['student'] = {k: v.clone() for k, v in unwrap_network(self.network).state_dict().items()}
            seen['teacher'] = {k: v.clone() for k, v in self.teacher.state_dict().items()}
            seen['warmup'] = self.in_supervised_warmup()
        out = original(self, batch)
        seen['mix_losses'].append(float(out['mix_loss']))
        return out
    monkeypatch.setattr(M3HLTrainer, 'train_step', recording_step)
    return seen


def saved_bytes_beyond(inputs, fn):
    """Bytes of the storages autograd saves for the backward of ``fn()`` that are not ``inputs``'."""
    import torch
    known = {t.untyped_storage().data_ptr() for t in inputs}
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(n for ptr, n in saved.items() if ptr not in known)
