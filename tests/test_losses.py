import torch

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
