import os
import sys

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from conftest import saved_bytes_beyond

from nnunetv2_m3hl.features import FeatureTap, high_level_loss, low_level_loss
from nnunetv2_m3hl.teacher import make_teacher

# benchmarks/cost/step_operations.py counts the operations that the feature terms launch
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks', 'cost'))


def build(arch: str, dim: int):
    conv = nn.Conv2d if dim == 2 else nn.Conv3d
    norm = nn.InstanceNorm2d if dim == 2 else nn.InstanceNorm3d
    common = dict(input_channels=1, n_stages=3, features_per_stage=[8, 16, 32], conv_op=conv,
                  kernel_sizes=3, strides=[1, 2, 2], num_classes=3, n_conv_per_stage_decoder=1,
                  norm_op=norm, norm_op_kwargs={'affine': True}, nonlin=nn.LeakyReLU, deep_supervision=True)
    if arch == 'plain':
        return PlainConvUNet(n_conv_per_stage=1, **common)
    return ResidualEncoderUNet(n_blocks_per_stage=1, **common)


@pytest.mark.parametrize('arch', ['plain', 'resenc'])
@pytest.mark.parametrize('dim', [2, 3])
def test_taps_return_bottleneck_and_last_decoder_features(arch, dim):
    net = build(arch, dim)
    tap = FeatureTap(net)
    spatial = (16,) * dim
    out = net(torch.randn(2, 1, *spatial))
    high, low = tap.pop()
    assert high.shape == (2, 32, *(s // 4 for s in spatial))
    assert low.shape == (2, 8, *spatial)
    assert out[0].shape == (2, 3, *spatial)
    with pytest.raises(RuntimeError):
        tap.pop()  # features are consumed once
    tap.remove()
    net(torch.randn(1, 1, *spatial))
    assert tap.features == {}


def test_hl_terms_vanish_for_identical_features_and_not_otherwise():
    # every mix is compared with both unlabeled images of its couple: all features identical -> zero
    f = torch.randn(1, 8, 4, 4).repeat(3, 1, 1, 1)
    assert high_level_loss(f, f.clone()).abs() < 1e-6
    assert low_level_loss(f, f.clone()) == 0
    g = torch.randn(3, 8, 4, 4)
    assert high_level_loss(f, g) > 0.1 and low_level_loss(f, g) > 0.1


def test_hl_compares_each_mix_with_both_unlabeled_images_of_its_couple():
    teacher = torch.randn(2, 4, 3, 3)
    student = teacher.clone()
    # student 0 equals teacher 0 and differs from teacher 1: half of its terms are non-zero
    expected = 0.5 * (torch.nn.functional.l1_loss(student, teacher)
                      + torch.nn.functional.l1_loss(student, teacher[[1, 0]]))
    assert torch.allclose(low_level_loss(student, teacher), expected)
    assert low_level_loss(student, teacher) > 0


def test_gradients_reach_the_student_only():
    student = build('plain', 2)
    teacher = make_teacher(student)
    s_tap, t_tap = FeatureTap(student), FeatureTap(teacher)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        teacher(x + 0.1)
    t_high, t_low = t_tap.pop()
    student(x)
    s_high, s_low = s_tap.pop()
    (high_level_loss(s_high, t_high) + low_level_loss(s_low, t_low)).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_high_level_loss_is_the_reference_formula():
    """The reference: ``1 - cosine_similarity(a.flatten(1), b.flatten(1)).mean()`` for each mix against each
    unlabeled image of its couple (4 terms per couple)."""
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 6, 3, 5), torch.randn(4, 6, 3, 5)

    def reference(a, b):
        return 1 - torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1)).mean()
    partner = [1, 0, 3, 2]
    expected = 0.5 * (reference(student, teacher) + reference(student, teacher[partner]))
    assert torch.allclose(high_level_loss(student, teacher), expected, atol=1e-6)


def test_per_sample_and_per_position_cosines_differ():
    """Scaling half of the positions leaves every per-position cosine unchanged but moves the per-sample one."""
    torch.manual_seed(1)
    teacher = torch.randn(2, 8, 4, 4)
    student = teacher + 0.3 * torch.randn_like(teacher)
    scaled = student.clone()
    scaled[..., :2] *= 5
    per_position = [high_level_loss(s, teacher, 'position') for s in (student, scaled)]
    per_sample = [high_level_loss(s, teacher, 'sample') for s in (student, scaled)]
    assert torch.allclose(per_position[0], per_position[1], atol=1e-6)
    assert not torch.allclose(per_sample[0], per_sample[1], atol=1e-3)
    with pytest.raises(ValueError):
        high_level_loss(student, teacher, 'channel')


def plain_low_level_loss(student, teacher):
    """The expression the memory-lean low-level term replaces."""
    partner = [k ^ 1 if k ^ 1 < student.shape[0] else k for k in range(student.shape[0])]
    teacher = teacher.detach()
    return 0.5 * (torch.nn.functional.l1_loss(student.float(), teacher.float())
                  + torch.nn.functional.l1_loss(student.float(), teacher[partner].float()))


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('batch_size', [1, 2, 3])
def test_low_level_loss_has_the_plain_gradient_bit_for_bit(dtype, batch_size):
    torch.manual_seed(batch_size)
    start = torch.randn(batch_size, 6, 5, 4, 3).to(dtype)
    teacher = torch.randn(batch_size, 6, 5, 4, 3).to(dtype)
    plain, lean = start.clone().requires_grad_(), start.clone().requires_grad_()
    expected, value = plain_low_level_loss(plain, teacher), low_level_loss(lean, teacher)
    (expected * 3.7).backward()
    (value * 3.7).backward()
    assert torch.equal(plain.grad, lean.grad) and lean.grad.dtype == dtype
    assert torch.allclose(value, expected, rtol=1e-6, atol=0)  # the sums differ only in their order


def test_low_level_loss_keeps_no_copy_of_half_precision_maps():
    # under autocast the decoder maps are float16; the plain expression keeps float32 copies of them
    student = torch.randn(2, 8, 16, 16, 16).half().requires_grad_()
    teacher = torch.randn(2, 8, 16, 16, 16).half()
    one_map = student.numel() * student.element_size()
    assert saved_bytes_beyond([student, teacher], lambda: plain_low_level_loss(student, teacher)) >= 4 * one_map
    assert saved_bytes_beyond([student, teacher], lambda: low_level_loss(student, teacher)) < 0.01 * one_map


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('batch_size', [1, 4, 5])
def test_low_level_loss_in_small_chunks_is_the_same(dtype, batch_size):
    """Chunks of a few columns (down to one) give the gradient of the plain expression bit for bit, and its value."""
    torch.manual_seed(10 + batch_size)
    start = torch.randn(batch_size, 3, 7, 5).to(dtype)
    teacher = torch.randn(batch_size, 3, 7, 5).to(dtype)
    # equal voxels and voxels one unit in the last place apart: the signs the backward takes in the maps' dtype
    teacher[:, 0] = start[:, 0]
    teacher[:, 1] = torch.nextafter(start[:, 1], torch.tensor(float('inf'), dtype=dtype))
    teacher[:, 1, ::2] = torch.nextafter(start[:, 1, ::2], torch.tensor(float('-inf'), dtype=dtype))
    assert ((teacher - start)[:, 1] != 0).all()
    plain = start.clone().requires_grad_()
    expected = plain_low_level_loss(plain, teacher)
    (expected * 2.3).backward()
    for max_chunk_elements in (1, 4 * batch_size, 50, 10 ** 6):
        lean = start.clone().requires_grad_()
        value = low_level_loss(lean, teacher, max_chunk_elements=max_chunk_elements)
        (value * 2.3).backward()
        assert torch.equal(plain.grad, lean.grad), max_chunk_elements
        assert torch.allclose(value, expected, rtol=1e-6, atol=0)


def operations_of_forward_and_backward(loss, batch_size: int, feature_shape) -> int:
    """Tensor operations of one forward and backward of a feature term on half-precision maps (caches warmed)."""
    from step_operations import count_operations
    teacher = torch.randn(batch_size, *feature_shape).half()
    student = torch.randn(batch_size, *feature_shape).half().requires_grad_()
    loss(student, teacher).backward()
    return count_operations(lambda: loss(student, teacher).backward())


def test_low_level_loss_launches_a_few_operations_per_chunk_not_per_sample():
    counts = {b: operations_of_forward_and_backward(low_level_loss, b, (4, 8, 8)) for b in (2, 3, 12, 13)}
    # the same count for 12 and 13 samples as for 2 and 3: it does not grow with the batch
    assert counts[12] == counts[2] and counts[13] == counts[3] < 40


def plain_high_level_loss(student, teacher, cosine_over):
    """Each mixed image against each unlabeled image of its couple with ``F.cosine_similarity``, one pair at a time."""
    partner = [k ^ 1 if k ^ 1 < student.shape[0] else k for k in range(student.shape[0])]

    def distance(s, t):
        if cosine_over == 'sample':
            return (1 - torch.nn.functional.cosine_similarity(s.flatten(1), t.flatten(1), dim=1)).mean()
        return (1 - torch.nn.functional.cosine_similarity(s, t, dim=1)).mean()
    return 0.5 * (distance(student.float(), teacher.float()) + distance(student.float(), teacher[partner].float()))


@pytest.mark.parametrize('cosine_over', ['sample', 'position'])
@pytest.mark.parametrize('batch_size', [1, 3, 4, 13])
def test_high_level_loss_matches_the_pairwise_cosines_in_value_and_gradient(cosine_over, batch_size):
    torch.manual_seed(batch_size)
    start = torch.randn(batch_size, 6, 3, 4, 2)
    teacher = start + 0.5 * torch.randn_like(start)
    plain, lean = start.clone().requires_grad_(), start.clone().requires_grad_()
    expected, value = plain_high_level_loss(plain, teacher, cosine_over), high_level_loss(lean, teacher, cosine_over)
    expected.backward()
    value.backward()
    assert torch.allclose(value, expected, rtol=1e-5, atol=1e-7)
    assert torch.allclose(lean.grad, plain.grad, rtol=1e-4, atol=1e-8)


def test_high_level_loss_launches_the_same_operations_for_any_batch():
    counts = {b: operations_of_forward_and_backward(high_level_loss, b, (16, 4, 4)) for b in (2, 13)}
    assert counts[13] == counts[2] < 50
