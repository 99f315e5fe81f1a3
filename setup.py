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
  # Kendall's tau of the search's proxy-fidelity study (tools/proxy_fidelity.py).
  'scipy>=1.10',
  # The architecture search's spaces and algorithms (official_spinenet.search).
  'pyglove>=0.4.4',
]

SERVING_REQUIRES = ['tensorflow-serving-api~=2.20.0']
# spinenet-search runs its trials on Ray Tune, on one machine or a Ray cluster.
SEARCH_REQUIRES = ['ray[tune]>=2.9']
LINT_REQUIRES = ['ruff==0.17.6']

# The top-level gin_configs/ folder ships inside the package as
# official_spinenet/gin_configs, where `official_spinenet.config_files` finds it
# in an installed copy (wheel or `pip install .`); an editable install and a
# source checkout read the top-level folder itself.
GIN_PACKAGE = 'official_spinenet.gin_configs'

# User commands: every one is `official_spinenet.binaries.<module>:run`.
CONSOLE_SCRIPTS = {
  'spinenet-train': 'train',
  'spinenet-demo': 'demo',
  'spinenet-export': 'export',
  'spinenet-predict': 'predict',
  'spinenet-stats': 'stats',
  'spinenet-make-shapes': 'make_shapes',
  'spinenet-serve-client': 'serve_client',
  'spinenet-convert-checkpoint': 'convert_checkpoint',
  'spinenet-create-coco-tfrecord': 'create_coco_tfrecord',
  'spinenet-create-classification-tfrecord': 'create_classification_tfrecord',
  'spinenet-check-data': 'check_data',
  'spinenet-export-tflite': 'export_tflite',
  'spinenet-draw-architecture': 'draw_architecture',
  'spinenet-search': 'search',
}

setuptools.setup(
  name='official_spinenet',
  version='0.1.0',
  description='SpineNet, SpineNet-Mobile and NAS-FPN detectors for TensorFlow 2.',
  packages=setuptools.find_packages(include=['official_spinenet', 'official_spinenet.*'])
  + [GIN_PACKAGE],
  package_dir={GIN_PACKAGE: 'gin_configs'},
  package_data={GIN_PACKAGE: ['**/*.gin']},
  include_package_data=False,
  python_requires='>=3.10,<3.13',
  install_requires=INSTALL_REQUIRES,
  extras_require={
    # The gRPC path of spinenet-serve-client; REST needs nothing extra.
    'serving': SERVING_REQUIRES,
    'search': SEARCH_REQUIRES,
    'test': ['pytest>=7', 'pytest-xdist>=3', 'build>=1']
    + SERVING_REQUIRES
    + SEARCH_REQUIRES
    + LINT_REQUIRES,
  },
  entry_points={
    'console_scripts': [
      f'{name}=official_spinenet.binaries.{module}:run' for name, module in CONSOLE_SCRIPTS.items()
    ],
  },
)
