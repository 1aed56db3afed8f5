"""Deterministic cardiac-like phantoms in the contract's raw layout (labeled, unlabeled, test).

Each image holds a cavity (label 1) inside a myocardium-like ring (label 2) and a crescent beside the
ring (label 3), with random shape, pose, contrast, noise and a smooth bias field. 2D images are
written as single-slice NIfTI volumes with a large through-plane spacing (999), so that nnU-Net plans
them as 2D.
"""
import os
from typing import Dict, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from dataset_conversion.common import building, dataset_folder, write_dataset_json

LABELS = {'background': 0, 'cavity': 1, 'ring': 2, 'crescent': 3}


def _smooth_field(shape: Sequence[int], rng: np.random.Generator, strength: float) -> np.ndarray:
    """A low-order polynomial bias field around 1."""
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing='ij')
    field = np.ones(shape)
    for g in grids:
        field += strength * (rng.uniform(-1, 1) * g + 0.5 * rng.uniform(-1, 1) * g ** 2)
    return np.clip(field, 0.3, None)


def make_phantom(shape: Sequence[int], rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """One image (float32) and its label map (uint8), 2D or 3D."""
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    size = min(shape[-2:])
    coords = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing='ij')
    center = [rng.uniform(0.38, 0.62) * s for s in shape]
    # in-plane rotation and anisotropic radii make ellipses of random pose
    angle = rng.uniform(0, np.pi)
    dy, dx = coords[-2] - center[-2], coords[-1] - center[-1]
    u = np.cos(angle) * dy + np.sin(angle) * dx
    v = -np.sin(angle) * dy + np.cos(angle) * dx
    r_cavity = rng.uniform(0.09, 0.16) * size
    aspect = rng.uniform(0.75, 1.3)
    sq = (u / r_cavity) ** 2 + (v / (r_cavity * aspect)) ** 2
    if ndim == 3:
        r_z = rng.uniform(0.25, 0.4) * shape[0]
        sq = sq + ((coords[0] - center[0]) / r_z) ** 2
    dist = np.sqrt(sq)
    thickness = rng.uniform(0.35, 0.6)
    label = np.zeros(shape, dtype=np.uint8)
    label[dist < 1 + thickness] = LABELS['ring']
    label[dist < 1] = LABELS['cavity']
    # crescent: a larger ellipse beside the ring, minus the ring's outer disc
    side = rng.uniform(0, 2 * np.pi)
    offset = (1 + thickness) * r_cavity * 0.9
    cu, cv = np.cos(side) * offset, np.sin(side) * offset * aspect
    r_cres = (1 + thickness) * r_cavity * rng.uniform(0.9, 1.2)
    sq_c = ((u - cu) / r_cres) ** 2 + ((v - cv) / (r_cres * 1.2)) ** 2
    if ndim == 3:
        sq_c = sq_c + ((coords[0] - center[0]) / r_z) ** 2
    label[(np.sqrt(sq_c) < 1) & (dist >= 1 + thickness + 0.08)] = LABELS['crescent']
    return render_contrast(label, rng), label


def render_contrast(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One image of a phantom's label map: random class intensities, a smooth bias field and noise (float32). Called
    again on the same label map, it gives another contrast of the same anatomy (a second MRI sequence, a colour
    channel)."""
    shape = label.shape
    intensities = {0: rng.uniform(0.15, 0.35), 1: rng.uniform(0.75, 1.0), 2: rng.uniform(0.35, 0.55),
                   3: rng.uniform(0.6, 0.85)}
    image = np.zeros(shape)
    for k, value in intensities.items():
        image[label == k] = value
    image = image * _smooth_field(shape, rng, rng.uniform(0.1, 0.35))
    image = image + rng.normal(0, rng.uniform(0.04, 0.12), shape)
    return (image * 1000).astype(np.float32)


def _write(array: np.ndarray, path: str, is_2d: bool) -> None:
    if is_2d:
        img = sitk.GetImageFromArray(array[None])
        img.SetSpacing((1.0, 1.0, 999.0))
    else:
        img = sitk.GetImageFromArray(array)
        img.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(img, path)


def _write_png(array: np.ndarray, path: str) -> None:
    from PIL import Image
    Image.fromarray(array).save(path)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(image / 1000 * 200, 0, 255).astype(np.uint8)


# file layouts nnU-Net reads that the phantoms can be written in: NIfTI with one file per channel, or nnU-Net's
# natural-image layout (one RGB PNG per case holding all three channels, NaturalImage2DIO; 2D only)
LAYOUTS = ('nifti', 'rgb_png')


def make_synthetic_dataset(raw_root: str, dataset_id: int, n_labeled: int, n_unlabeled: int, n_test: int,
                           shape: Sequence[int] = (64, 64), seed: int = 0, name: str = 'M3HLPhantom',
                           overwrite: bool = False, channels: int = 1, layout: str = 'nifti') -> str:
    """Write ``Dataset{id}_{name}`` under ``raw_root``; returns its folder. The same seed gives the same
    dataset; unlabeled scans never have labels anywhere in the folder. ``channels`` contrasts of each phantom are
    written as ``CASE_0000``, ``CASE_0001``, ... (``nifti``); ``rgb_png`` writes three contrasts as the colours of
    one ``CASE_0000.png``."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == 'rgb_png' and len(shape) != 2:
        raise ValueError("the rgb_png layout is 2D only (nnU-Net's NaturalImage2DIO)")
    is_2d = len(shape) == 2
    target = dataset_folder(raw_root, dataset_id, name)
    rng = np.random.default_rng(seed)
    with building(target, overwrite) as tmp:
        for sub in ('imagesTr', 'labelsTr', 'imagesUnlabeledTr', 'imagesTs', 'labelsTs'):
            os.makedirs(os.path.join(tmp, sub))
        groups: Dict[str, Tuple[int, str, str]] = {'lab': (n_labeled, 'imagesTr', 'labelsTr'),
                                                   'unl': (n_unlabeled, 'imagesUnlabeledTr', None),
                                                   'test': (n_test, 'imagesTs', 'labelsTs')}
        for prefix, (count, image_dir, label_dir) in groups.items():
            for i in range(count):
                image, label = make_phantom(shape, rng)
                case = f'{prefix}_{i:03d}'
                if layout == 'rgb_png':
                    colours = [image] + [render_contrast(label, rng) for _ in range(2)]
                    _write_png(np.stack([_to_uint8(c) for c in colours], axis=-1),
                               os.path.join(tmp, image_dir, f'{case}_0000.png'))
                    if label_dir is not None:
                        _write_png(label, os.path.join(tmp, label_dir, f'{case}.png'))
                    continue
                contrasts = [image] + [render_contrast(label, rng) for _ in range(channels - 1)]
                for c, contrast in enumerate(contrasts):
                    _write(contrast, os.path.join(tmp, image_dir, f'{case}_{c:04d}.nii.gz'), is_2d)
                if label_dir is not None:
                    _write(label, os.path.join(tmp, label_dir, f'{case}.nii.gz'), is_2d)
        description = f'synthetic cardiac-like phantoms, seed {seed}, shape {list(shape)}'
        if layout == 'rgb_png':
            write_dataset_json(tmp, LABELS, n_labeled, name, description,
                               channel_names={'0': 'R', '1': 'G', '2': 'B'}, file_ending='.png',
                               extra={'overwrite_image_reader_writer': 'NaturalImage2DIO'})
        else:
            write_dataset_json(tmp, LABELS, n_labeled, name, description,
                               channel_names={str(c): f'MRI{c}' for c in range(channels)} if channels > 1 else None)
    return target
