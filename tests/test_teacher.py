import numpy as np
import pytest
import torch
from scipy import ndimage

from nnunetv2_m3hl.teacher import (_keep_largest_torch, _propagate_max_index, ema_update, hard_pseudo_labels,
                                   largest_component_per_class, make_teacher, pseudo_labels_from_logits)


def reference_lcc(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per class, keep the largest fully connected component (scipy), everything else -> 0."""
    out = np.zeros_like(labels)
    structure = np.ones((3,) * labels.ndim)
    for c in range(1, num_classes):
        comp, n = ndimage.label(labels == c, structure=structure)
        if n == 0:
            continue
        sizes = np.bincount(comp.ravel())[1:]
        out[comp == (np.argmax(sizes) + 1)] = c
    return out


@pytest.mark.parametrize('backend', ['torch', 'scipy'])
def test_keeps_only_the_largest_component_of_each_class(backend):
    labels = torch.zeros(1, 20, 20, dtype=torch.long)
    labels[0, 1:4, 1:4] = 1      # 9 voxels
    labels[0, 10:15, 10:15] = 1  # 25 voxels -> kept
    labels[0, 1:3, 15:19] = 2    # 8 voxels -> kept
    labels[0, 17, 1] = 2         # 1 voxel
    out = largest_component_per_class(labels, 3, backend)
    expected = torch.zeros_like(labels)
    expected[0, 10:15, 10:15] = 1
    expected[0, 1:3, 15:19] = 2
    assert torch.equal(out, expected)


@pytest.mark.parametrize('backend', ['torch', 'scipy'])
@pytest.mark.parametrize('shape', [(6, 24, 24), (3, 12, 12, 12)])
def test_matches_scipy_on_random_maps(shape, backend):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, shape)
    # smooth a bit so that components of all sizes appear
    labels = np.where(rng.random(shape) < 0.35, 0, labels)
    out = largest_component_per_class(torch.from_numpy(labels), 4, backend).numpy()
    for i in range(shape[0]):  # every sample (2D slice or 3D volume) on its own
        ref = reference_lcc(labels[i], 4)
        # ties may pick another component of the same size: compare per-class sizes, and membership otherwise
        for c in range(1, 4):
            assert (out[i] == c).sum() == (ref == c).sum()
            comp, _ = ndimage.label(labels[i] == c, structure=np.ones((3,) * (len(shape) - 1)))
            kept = np.unique(comp[out[i] == c])
            assert len(kept[kept > 0]) <= 1, 'more than one component kept'


@pytest.mark.parametrize('backend', ['torch', 'scipy'])
def test_components_do_not_cross_samples(backend):
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[0, 7, :4] = 1   # 4 voxels on the last row of sample 0: its largest
    labels[0, 1, :3] = 1   # 3 voxels
    labels[1, 0, :4] = 1   # 4 voxels on the first row of sample 1, touching sample 0's row if samples were joined
    labels[1, 4, :5] = 1   # 5 voxels: sample 1's largest
    out = largest_component_per_class(labels, 2, backend)
    expected = torch.zeros_like(labels)
    expected[0, 7, :4] = 1
    expected[1, 4, :5] = 1
    assert torch.equal(out, expected)


def test_all_background_teacher_gives_empty_pseudo_labels():
    logits = torch.zeros(2, 3, 8, 8)
    logits[:, 0] = 5
    probs, hard = pseudo_labels_from_logits(logits)
    assert hard.shape == (2, 1, 8, 8) and hard.sum() == 0
    assert torch.allclose(probs.sum(1), torch.ones(2, 8, 8))


def test_hard_pseudo_labels_are_the_argmax_of_the_softmax_ties_and_nan_included():
    torch.manual_seed(0)
    logits = torch.randint(0, 3, (3, 4, 9, 7)).float()  # small integers: many ties between classes
    logits[0, 2, 0, 0] = float('nan')
    assert torch.equal(hard_pseudo_labels(logits), torch.softmax(logits, 1).argmax(1))
    volumes = torch.randn(2, 3, 5, 6, 7).half()
    assert torch.equal(hard_pseudo_labels(volumes), torch.softmax(volumes.float(), 1).argmax(1))
    assert torch.equal(pseudo_labels_from_logits(volumes, keep_largest_component=False)[1][:, 0],
                       torch.softmax(volumes.float(), 1).argmax(1))


def test_ema_update_is_the_ema_formula():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    teacher = make_teacher(student)
    for p, q in zip(teacher.state_dict().values(), student.state_dict().values()):
        assert torch.equal(p, q)
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    student.train()
    student(torch.randn(4, 1, 8, 8))  # moves BN running stats and the batch counter
    ema_update(teacher, student, 0.99)
    for k, v in teacher.state_dict().items():
        s = student.state_dict()[k]
        if v.dtype.is_floating_point:
            # up to float32 rounding (computed as t + 0.01 (s - t), one pass over the weights)
            assert torch.allclose(v, 0.99 * t_before[k] + 0.01 * s, atol=1e-7, rtol=1e-6)
        else:
            assert torch.equal(v, s)
    assert all(not p.requires_grad for p in teacher.parameters())


def serpentine(size: int = 33) -> torch.Tensor:
    """One component, a path that winds through the whole image: the longest distance for labels to travel."""
    fg = torch.zeros(1, 1, size, size, dtype=torch.bool)
    fg[0, 0, ::2, :] = True
    fg[0, 0, 1::4, -1] = True
    fg[0, 0, 3::4, 0] = True
    return fg


def test_pointer_jumping_gives_the_same_labels_in_far_fewer_iterations():
    fg = serpentine()
    pooled, pooling_iterations = _propagate_max_index(fg, pointer_jumping=False, hooking=False)
    jumped, jumping_iterations = _propagate_max_index(fg, pointer_jumping=True, hooking=False)
    assert torch.equal(pooled, jumped)
    assert set(jumped.unique().tolist()) == {0, fg.numel()}  # one component, labelled with its largest index
    assert pooling_iterations > 10 * jumping_iterations, (pooling_iterations, jumping_iterations)


def ragged_foreground(shape, seed: int) -> torch.Tensor:
    """Smoothed noise split at its median: many components with long, ragged borders (an untrained teacher)."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=shape), (0, 0) + (2.0,) * (len(shape) - 2))
    return torch.from_numpy(field > np.median(field))


@pytest.mark.parametrize('shape', [(3, 2, 64, 56), (2, 2, 20, 24, 22)])
def test_hooking_gives_the_same_labels_in_fewer_iterations(shape):
    fg = ragged_foreground(shape, seed=5)
    pooled, _ = _propagate_max_index(fg, pointer_jumping=False, hooking=False)
    jumped, jumping_iterations = _propagate_max_index(fg, hooking=False)
    hooked, hooking_iterations = _propagate_max_index(fg)
    assert torch.equal(hooked, pooled) and torch.equal(jumped, pooled)
    assert hooking_iterations < jumping_iterations, (hooking_iterations, jumping_iterations)
    # each component carries its largest voxel index, as scipy's labelling says
    for sample in range(shape[0]):
        for channel in range(shape[1]):
            components, _ = ndimage.label(fg[sample, channel].numpy(), np.ones((3,) * (len(shape) - 2)))
            flat_ids = hooked[sample, channel].flatten().numpy()
            flat_components = components.ravel()
            for k in np.unique(flat_components[flat_components > 0]):
                assert set(flat_ids[flat_components == k]) == {np.flatnonzero(flat_components == k).max() + 1}
    serpent = serpentine()
    assert torch.equal(_propagate_max_index(serpent)[0], _propagate_max_index(serpent, hooking=False)[0])


@pytest.mark.parametrize('max_elements', [1, 2 ** 25])
def test_all_classes_at_once_or_in_chunks_match_scipy(max_elements):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, (4, 20, 20))
    labels = np.where(rng.random(labels.shape) < 0.3, 0, labels)
    keep, _ = _keep_largest_torch(torch.from_numpy(labels), [1, 2, 3], max_elements)
    out = np.where(keep.numpy(), labels, 0)
    for i in range(labels.shape[0]):
        ref = reference_lcc(labels[i], 4)
        for c in range(1, 4):
            assert (out[i] == c).sum() == (ref == c).sum()


@pytest.mark.parametrize('shape', [(5, 30, 28), (2, 10, 14, 12)])
def test_host_and_torch_paths_keep_the_same_voxels_also_among_equal_sizes(shape):
    rng = np.random.default_rng(3)
    # sparse single voxels and pairs: most classes have many components of the largest size
    labels = np.where(rng.random(shape) < 0.85, 0, rng.integers(1, 4, shape))
    labels[0, 1, 1:3] = 1  # a pair and an equal pair later in the same sample
    labels[0, -2, -3:-1] = 1
    as_tensor = torch.from_numpy(labels)
    host = largest_component_per_class(as_tensor, 4, 'scipy')
    torch_path = largest_component_per_class(as_tensor, 4, 'torch')
    assert torch.equal(host, torch_path)
    # the rule: among equal sizes, the component whose last voxel comes later
    structure = np.ones((3,) * (len(shape) - 1))
    for i in range(shape[0]):
        for c in range(1, 4):
            comp, n = ndimage.label(labels[i] == c, structure=structure)
            if n == 0:
                continue
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            tied = np.flatnonzero(sizes == sizes.max())
            last = {k: np.flatnonzero(comp.ravel() == k).max() for k in tied}
            winner = max(last, key=last.get)
            assert np.array_equal(host[i].numpy() == c, comp == winner)


def test_cube_maximum_axis_by_axis_is_the_same():
    rng = np.random.default_rng(4)
    fg = torch.from_numpy(rng.random((2, 3, 9, 11, 13)) < 0.6)
    cube, cube_iterations = _propagate_max_index(fg, separable=False)
    axes, axes_iterations = _propagate_max_index(fg, separable=True)
    assert torch.equal(cube, axes) and cube_iterations == axes_iterations


def test_confidence_gate_keeps_the_class_and_counts_the_kept_share():
    from nnunetv2_m3hl.teacher import gate_by_confidence, hard_pseudo_labels_and_confidence, is_left_out, \
        kept_share_per_class
    logits = torch.tensor([[[[4.0, 0.0, 0.0, 0.0]], [[0.0, 4.0, 0.1, 0.0]], [[0.0, 0.0, 0.0, 0.0]]]])  # (1, 3, 1, 4)
    labels, confidence = hard_pseudo_labels_and_confidence(logits)
    assert torch.equal(labels, torch.softmax(logits, 1).argmax(1))
    assert torch.allclose(confidence, torch.softmax(logits, 1).amax(1))
    gated = gate_by_confidence(labels, confidence, 0.9)
    # voxels 0 and 1 are confident (~0.96); voxels 2 and 3 are not, and keep their class as ~label
    assert gated.tolist() == [[[0, 1, -1 - 1, -1 - 0]]]
    assert is_left_out(gated).tolist() == [[[False, False, True, True]]]
    share = kept_share_per_class(gated, 3)
    assert share[0] == 0.5 and share[1] == 0.5 and torch.isnan(share[2])
    assert torch.equal(gate_by_confidence(labels, confidence, 0.0), labels)
