import os

import pytest

from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
from nnunetv2_m3hl import trainer_path

VARIANTS = ['M3HLTrainer', 'M3HLTrainer_noHL', 'M3HLTrainer_noHigh', 'M3HLTrainer_noLow', 'M3HLTrainer_noLCC',
            'M3HLTrainer_boxMask', 'M3HLTrainer_reference', 'M3HLTrainer_warmup', 'M3HLTrainer_warmup10',
            'M3HLTrainer_rampup', 'M3HLTrainer_lateTeacher', 'M3HLTrainer_250epochs', 'M3HLTrainer_500epochs', 'M3HLTrainer_2epochs',
            'BCPTrainer_pretrain', 'BCPTrainer']


@pytest.mark.parametrize('name', VARIANTS)
def test_nnunet_finds_every_trainer_through_the_ext_variable(monkeypatch, name):
    monkeypatch.setenv('nnUNet_extTrainer', trainer_path())
    cls = recursive_find_trainer_class_by_name(name)
    assert cls.__name__ == name


def test_user_subclass_in_another_folder(monkeypatch, tmp_path):
    (tmp_path / 'mine.py').write_text(
        'from nnunetv2_m3hl.trainers.m3hl_trainer import M3HLTrainer\n'
        'class MyM3HL(M3HLTrainer):\n    pass\n')
    monkeypatch.setenv('nnUNet_extTrainer', os.pathsep.join([trainer_path(), str(tmp_path)]))
    cls = recursive_find_trainer_class_by_name('MyM3HL')
    assert [c.__name__ for c in cls.__mro__[:2]] == ['MyM3HL', 'M3HLTrainer']


def test_trainer_folder_holds_only_trainer_modules():
    modules = [f for f in os.listdir(trainer_path()) if f.endswith('.py') and f != '__init__.py']
    assert sorted(modules) == ['bcp_trainers.py', 'm3hl_trainer.py', 'm3hl_variants.py']
