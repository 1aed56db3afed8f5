import torch

from conftest import saved_bytes_beyond
from nnunetv2_m3hl.losses import RegionWeightedDiceCE, masked_soft_dice_loss


def one_hot_logits(target, num_classes, scale=30.0):
    return torch.nn.functional.one_hot(target[:, 0].long(), num_classes).movedim(-1, 1).float() * scale


def test_perfect_prediction_gives_near_zero_loss():
    target = torch.randint(0, 3, (2, 1, 16, 16))
    source = torch.randint(0, 2, (2, 1, 16, 16)).float()
    loss = RegionWeightedDiceCE(0.5)(one_hot_logits(target, 3), target, source)
    assert loss < 1e-3


def test_pseudo_labeled_region_is_weighted_by_u_weight():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 16, 16)
    target = torch.randint(0, 3, (2, 1, 16, 16))
    source = torch.zeros(2, 1, 16, 16)
    source[..., 8:] = 1
    full = RegionWeightedDiceCE(1.0)(logits, target, source)
    half = RegionWeightedDiceCE(0.5)(logits, target, source)
    none = RegionWeightedDiceCE(0.0)(logits, target, source)
    # linear in u_weight: L = L_labeled + u * L_pseudo
    assert torch.allclose(half, none + 0.5 * (full - none), atol=1e-5)
    assert full > half > none


def test_dice_is_masked_and_includes_background():
    probs = torch.zeros(1, 2, 4, 4)
    probs[:, 0] = 1  # predicts background everywhere
    target = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    target[..., 2:] = 1
    inside = torch.zeros(1, 1, 4, 4)
    inside[..., :2] = 1  # only the correct half counts
    assert masked_soft_dice_loss(probs, target, inside) < 0.5 + 1e-4  # background perfect, class 1 absent
    assert masked_soft_dice_loss(probs, target, torch.ones_like(inside)) > masked_soft_dice_loss(probs, target, inside)


def test_ignore_label_voxels_do_not_count():
    target = torch.randint(0, 3, (1, 1, 8, 8))
    logits = one_hot_logits(target, 3)
    corrupted = target.clone()
    corrupted[..., :4] = 9  # ignore label
    loss = RegionWeightedDiceCE(0.5, ignore_label=9)(logits, corrupted, torch.zeros(1, 1, 8, 8))
    assert loss < 1e-3


def nnunet_style_region_loss(logits, target, from_unlabeled, u_weight):
    """The same loss written with nnU-Net's ``get_tp_fp_fn_tn`` (float tp/fp/fn maps)."""
    from nnunetv2.training.loss.dice import get_tp_fp_fn_tn
    from nnunetv2.training.loss.robust_ce_loss import RobustCrossEntropyLoss
    probabilities = torch.softmax(logits, 1)
    ce_map = RobustCrossEntropyLoss(reduction='none')(logits, target.long())
    total = 0
    for region, weight in ((1 - from_unlabeled, 1.0), (from_unlabeled, u_weight)):
        axes = [0] + list(range(2, logits.ndim))
        tp, fp, fn, _ = get_tp_fp_fn_tn(probabilities, target, axes=axes, mask=region)
        dice = 1 - ((2 * tp + 1e-5) / (2 * tp + fp + fn + 1e-5)).mean()
        total = total + weight * (dice + (ce_map * region[:, 0]).sum() / region.sum().clamp_min(1))
    return total


def test_region_loss_equals_the_tp_fp_fn_formulation_and_keeps_less_for_the_backward():
    torch.manual_seed(0)
    start = torch.randn(3, 4, 6, 7, 8)
    target = torch.randint(0, 4, (3, 1, 6, 7, 8)).to(torch.int16)
    source = (torch.rand(3, 1, 6, 7, 8) > 0.5).float()
    plain, lean = start.clone().requires_grad_(), start.clone().requires_grad_()
    expected = nnunet_style_region_loss(plain, target, source, 0.5)
    value = RegionWeightedDiceCE(0.5)(lean, target, source)
    expected.backward()
    value.backward()
    assert torch.allclose(value, expected, rtol=1e-6)
    assert torch.allclose(lean.grad, plain.grad, rtol=1e-5, atol=1e-8)

    logits = start.clone().requires_grad_()
    lean_bytes = saved_bytes_beyond([], lambda: RegionWeightedDiceCE(0.5)(logits, target, source))
    plain_bytes = saved_bytes_beyond([], lambda: nnunet_style_region_loss(logits, target, source, 0.5))
    one_map = logits.numel() * logits.element_size()
    assert lean_bytes < 4.5 * one_map < plain_bytes  # logits, softmax, log-softmax, boolean masks


def test_negative_targets_are_left_out_of_both_regions():
    from nnunetv2_m3hl.losses import RegionWeightedDiceCE
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 1, 8, 8))
    from_unlabeled = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    from_unlabeled[:, :, :, 4:] = True
    loss = RegionWeightedDiceCE(0.5)
    loss.leave_out_negative = True
    uncertain = target.clone()
    uncertain[:, :, :4, 4:] = ~uncertain[:, :, :4, 4:]  # half of the pseudo-labeled region is left out
    gated = loss(logits, uncertain, from_unlabeled)
    # the same as a loss whose pseudo-labeled region is only the confident half
    confident_region = from_unlabeled.clone()
    confident_region[:, :, :4, 4:] = False
    plain = RegionWeightedDiceCE(0.5)
    labeled_only = plain(logits, target, from_unlabeled)  # the labeled region is unchanged
    grad_gated, = torch.autograd.grad(gated, logits)
    # voxels that are left out get no gradient from either region
    assert torch.all(grad_gated[:, :, :4, 4:] == 0)
    assert torch.isfinite(gated) and not torch.isclose(gated, labeled_only)
