"""Installs official_spinenet: SpineNet, SpineNet-Mobile and NAS-FPN for TensorFlow 2."""
import setuptools

INSTALL_REQUIRES = [
    'tensorflow~=2.20.0',
    'tf-keras~=2.20.0',
    'tf-models-official~=2.20.0',
    'pycocotools>=2.0.7',
    'absl-py>=1.4',
    'gin-config>=0.5',
    'numpy',
    'matplotlib>=3.7',
    'pillow>=9',
]

SERVING_REQUIRES = ['tensorflow-serving-api~=2.20.0']

setuptools.setup(
    name='official_spinenet',
    version='0.1.0',
    description='SpineNet, SpineNet-Mobile and NAS-FPN detectors for TensorFlow 2.',
    packages=setuptools.find_packages(include=['official_spinenet', 'official_spinenet.*']),
    python_requires='>=3.10,<3.13',
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # The gRPC path of spinenet-serve-client; REST needs nothing extra.
        'serving': SERVING_REQUIRES,
        'test': ['pytest>=7', 'pytest-xdist>=3'] + SERVING_REQUIRES,
    },
    entry_points={
        'console_scripts': [
            'spinenet-stats=official_spinenet.stats_main:run',
            'spinenet-make-shapes=official_spinenet.data.shapes_main:run',
            'spinenet-train=official_spinenet.train:main',
            'spinenet-demo=official_spinenet.demo:run',
            'spinenet-export=official_spinenet.export:main',
            'spinenet-predict=official_spinenet.predict:main',
            'spinenet-serve-client=official_spinenet.serving.serve_client:run',
        ],
    },
)
