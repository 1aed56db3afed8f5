from setuptools import find_packages, setup

setup(
    name='nnunetv2-m3hl',
    version='0.1.0',
    description='M3HL semi-supervised segmentation (mutual mask mix + high/low-level feature consistency) '
                'as nnU-Net v2 trainers',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['nnunetv2_m3hl', 'nnunetv2_m3hl.*', 'dataset_conversion',
                                    'dataset_conversion.*']),
    package_data={'nnunetv2_m3hl': ['demo_reference.json']},
    python_requires='>=3.10',
    install_requires=[
        'nnunetv2>=2.8.1',
        'torch>=2.3',
        'numpy',
        'batchgenerators>=0.25.1',
        'batchgeneratorsv2>=0.3',
        'acvl-utils>=0.2.3',
        'SimpleITK>=2.2.1',
        'blosc2>=3.0',
        'medpy>=0.5.2',
        'h5py',
        'pynrrd',
        'tqdm',
        'filelock>=3.12',
        'matplotlib',
        'pillow',
    ],
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'nnUNetv2_m3hl_trainer_path=nnunetv2_m3hl.cli:trainer_path_entry',
            'nnUNetv2_m3hl_preprocess_unlabeled=nnunetv2_m3hl.cli:preprocess_unlabeled_entry',
            'nnUNetv2_m3hl_convert_acdc=nnunetv2_m3hl.cli:convert_acdc_entry',
            'nnUNetv2_m3hl_convert_la=nnunetv2_m3hl.cli:convert_la_entry',
            'nnUNetv2_m3hl_evaluate=nnunetv2_m3hl.cli:evaluate_entry',
            'nnUNetv2_m3hl_demo=nnunetv2_m3hl.cli:demo_entry',
            'nnUNetv2_m3hl_make_ssl_dataset=nnunetv2_m3hl.cli:make_ssl_dataset_entry',
            'nnUNetv2_m3hl_check_dataset=nnunetv2_m3hl.cli:check_dataset_entry',
        ],
    },
)
