"""Parameters and multiply-adds of the published SpineNet / SpineNet-Mobile / NAS-FPN models.

The table `MODELS` holds how to build each published model and the figures the
papers report; `compute_rows` counts ours (`model_stats`) beside them, and
`report` gives the text table or JSON that `spinenet-stats` prints. Row kinds:

  retinanet       backbone + RetinaNetHead (91 classes, 9 anchors, levels 3-7) at the
                  paper's detection resolution. Head: 4 convs x 256 filters, except
                  49S (128 filters) and 190 (7 convs x 512); SpineNet-Mobile uses a
                  separable head as wide as its endpoints (48 / 40 / 24). NAS-FPN
                  rows: backbone + NAS-FPN decoder + 4 x 256 head.
  backbone        the backbone alone at the same resolution (no published figure;
                  not listed for the NAS-FPN rows, whose backbone is ResNet-50).
  maskrcnn        backbone + Mask R-CNN (SpineNet Sec. 5, tensorflow/tpu
                  spinenet*_mrcnn.yaml) at its paper resolution (190: 1536), built
                  with Model Garden's layers as `maskrcnn_model` builds them: RPN
                  of 1 conv (3 anchors, levels 3-7), box head of 4 convs + one FC
                  (1024) on 7x7 RoIAlign crops, mask head of 4 convs + 2x deconv on
                  14x14 crops, all 256 wide (49S: 128 / FC 512; 190: 384, 7 convs
                  in the box and mask heads). Multiply-adds are those of one
                  inference pass: the box head runs on the 1000 test proposals,
                  the mask head on the 100 detections (the count the published
                  figures use; docs/model_stats.md).
  classification  ImageNet: `ClassificationModel` at 224: the backbone built for
                  224 (levels 3-7 are 28, 14, 7, 4, 2 wide) + the paper's head
                  (P3-P7 fused, global average pool, Dense(1001); the fusion has
                  no parameters or counted multiply-adds, so tf-models-official's
                  top-level head counts the same).

Multiply-adds are those of conv and dense layers for one image (the papers'
"FLOPs"; see `model_stats`). Counting only traces the model (no arithmetic) and
the detection rows share one backbone built for any input size (a multiple of
2^7), so the 1280-pixel models take seconds to count; a classification row at a
size that is not a multiple of 2^7 builds its own backbone for that size.
Building SpineNet-190 takes the longest.
"""

import dataclasses
import functools
import gc
import json
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from absl import logging
import tensorflow as tf
import tf_keras

from official_spinenet.modeling import classification_model
from official_spinenet.modeling import maskrcnn_model
from official_spinenet.modeling import model_stats
from official_spinenet.modeling.backbones import factory
from official_spinenet.modeling.decoders import nasfpn
from official_spinenet.modeling.heads import classification_head
from official_spinenet.modeling.heads import retinanet_head
from official_spinenet.utils import tables

NUM_CLASSES = 91
NUM_ANCHORS = 9
NUM_IMAGENET_CLASSES = 1001
IMAGENET_RESOLUTION = 224
MIN_LEVEL, MAX_LEVEL = 3, 7
ROW_KINDS = ('retinanet', 'backbone', 'classification', 'maskrcnn')
# Mask R-CNN at inference (tensorflow/tpu and Model Garden defaults): 1 anchor
# scale x 3 aspect ratios, 1000 proposals after the RPN's NMS, 100 detections.
MASKRCNN_ASPECT_RATIOS = (0.5, 1.0, 2.0)
MASKRCNN_ANCHOR_SIZE = 3.0  # 190: 5.0; no weight or counted layer depends on it
TEST_PROPOSALS = 1000
MAX_DETECTIONS = 100
_BUILD_SIZE = 2**MAX_LEVEL
MULTIPLY_ADDS_CONVENTION = (
  'multiply-adds of conv and dense layers for one image (the papers\' "FLOPs"); '
  'batch norm, activations, pooling, resampling, additions and biases excluded'
)


@dataclasses.dataclass(frozen=True)
class MaskRCNNEntry:
  """A published Mask R-CNN: its resolution, heads and reported figures."""

  resolution: int
  head_filters: int = 256  # RPN, box-head convs and mask-head convs
  fc_dims: int = 1024
  box_convs: int = 4
  mask_convs: int = 4
  published: Optional[Tuple[float, float]] = None  # (params M, mult-adds B)


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  """A published model: how to build it and what the papers report."""

  family: str  # a factory.BACKBONES family: 'spinenet', 'spinenet_mobile', 'resnet'
  model_id: str
  resolution: int
  head_filters: int
  head_convs: int
  separable_head: bool = False
  published_retinanet: Optional[Tuple[float, float]] = None  # (params M, mult-adds B)
  published_classification: Optional[Tuple[float, float]] = None
  note: str = ''
  nasfpn: Optional[Tuple[int, int]] = None  # NAS-FPN decoder (num_repeats, num_filters)
  maskrcnn: Optional[MaskRCNNEntry] = None

  @property
  def name(self) -> str:
    if self.nasfpn:
      return f'R{self.model_id}-NAS-FPN {self.nasfpn[0]}@{self.nasfpn[1]}'
    prefix = 'SpineNet-Mobile-' if self.family == 'spinenet_mobile' else 'SpineNet-'
    return prefix + self.model_id


# SpineNet paper (Du et al., CVPR 2020) Tables 3 and 6; SpineNet-Mobile paper
# (Du et al., ECCV 2020). '143L' is a Model Garden variant without a published row.
# Mask R-CNN: tf-models-official's MODEL_GARDEN.md for 49 / 96 / 143 (the
# tensorflow/tpu model zoo gives 314.6B / 498.4B for 96 / 143), the tensorflow/tpu
# model zoo for 190, the SpineNet paper's Mask R-CNN table for 49S (as quoted by
# SpineNet-Pytorch, github.com/yan-roo/SpineNet-Pytorch).
# fmt: off
MODELS = {
  '49S': ModelEntry('spinenet', '49S', 640, 128, 4, published_retinanet=(11.9, 33.8),
                    maskrcnn=MaskRCNNEntry(640, head_filters=128, fc_dims=512,
                                           published=(13.9, 60.2))),
  '49': ModelEntry('spinenet', '49', 640, 256, 4, published_retinanet=(28.5, 85.4),
                   published_classification=(22.1, 3.5),
                   maskrcnn=MaskRCNNEntry(640, published=(40.8, 215.7))),
  '96': ModelEntry('spinenet', '96', 1024, 256, 4, published_retinanet=(43.0, 265.4),
                   published_classification=(36.5, 5.7),
                   maskrcnn=MaskRCNNEntry(1024, published=(55.2, 315.0))),
  '143': ModelEntry('spinenet', '143', 1280, 256, 4, published_retinanet=(67.0, 524.0),
                    published_classification=(60.5, 9.1),
                    maskrcnn=MaskRCNNEntry(1280, published=(79.2, 498.8))),
  '143L': ModelEntry('spinenet', '143L', 1280, 256, 4,
                     note='Model Garden variant (143 with filter_size_scale 1.3); '
                     'no published figure'),
  '190': ModelEntry('spinenet', '190', 1280, 512, 7, published_retinanet=(163.6, 1885.0),
                    published_classification=(127.1, 19.1),
                    maskrcnn=MaskRCNNEntry(1536, head_filters=384, box_convs=7, mask_convs=7,
                                           published=(168.2, 1685.7))),
  'mobile-49': ModelEntry('spinenet_mobile', '49', 384, 48, 4, separable_head=True,
                          published_retinanet=(2.34, 1.0)),
  'mobile-49S': ModelEntry('spinenet_mobile', '49S', 384, 40, 4, separable_head=True),
  'mobile-49XS': ModelEntry('spinenet_mobile', '49XS', 256, 24, 4, separable_head=True),
  # NAS-FPN paper (Ghiasi et al., CVPR 2019) Table 1 gives R-50 7@256 at 640; the
  # other stacks and widths are plotted (Fig. 8) without figures.
  'r50-nasfpn-3@256': ModelEntry('resnet', '50', 640, 256, 4, nasfpn=(3, 256)),
  'r50-nasfpn-5@256': ModelEntry('resnet', '50', 640, 256, 4, nasfpn=(5, 256)),
  'r50-nasfpn-7@256': ModelEntry('resnet', '50', 640, 256, 4, nasfpn=(7, 256),
                                 published_retinanet=(60.3, 140.6)),
  'r50-nasfpn-7@384': ModelEntry(
      'resnet', '50', 640, 256, 4, nasfpn=(7, 384),
      note='cells merge at 256 channels as in tf-models-official'),
}
# fmt: on

# Notes on rows whose published figure our count does not reproduce, or reproduces
# only with a departure from the published config; keyed by (model key, row kind).
# From measurement: every other published row is matched within 0.3% (params) and
# 1.1% (multiply-adds).
NOTES = {
  ('190', 'maskrcnn'): 'RPN of 1 conv: the tensorflow/tpu yaml asks for 7, which would add '
  '8.0M params / 391B mult-adds to what its model zoo reports',
  ('49S', 'retinanet'): 'published figure does not reproduce from the published specs '
  '(0.65x width, 128-filter endpoints and head give 5% fewer '
  'params, 9% fewer mult-adds)',
}


def resolve_names(values: Iterable[str], allowed: Iterable[str], what: str) -> List[str]:
  """`values` spelled as in `allowed` (case-insensitive); ValueError naming `what`."""
  allowed = list(allowed)
  lookup = {a.upper(): a for a in allowed}
  unknown = [v for v in values if v.upper() not in lookup]
  if unknown:
    raise ValueError(f'{what}: unknown value {unknown[0]!r}; choose from {allowed}.')
  return [lookup[v.upper()] for v in values]


def _build_backbone(entry: ModelEntry, resolution: Optional[int] = None) -> tf_keras.Model:
  """The backbone for a square input size; None: any multiple of 2^7 (one build for all).

  The factory imports only the entry's family: SpineNet rows do not load the
  mobile module, and only the NAS-FPN rows load Model Garden's ResNet (slow).
  """
  return factory.build_backbone(
    entry.family, entry.model_id, input_specs=[None, resolution, resolution, 3]
  )


def _feature_shapes(model: tf_keras.Model, resolution: int) -> Dict[str, list]:
  """Static [1, H_l, W_l, C_l] of a model's dict outputs for a square input."""
  return {
    level: [1, resolution // 2 ** int(level), resolution // 2 ** int(level), int(shape[-1])]
    for level, shape in model.output_specs.items()
  }


def _count(model, input_shape) -> Tuple[int, float]:
  """(trainable parameters, multiply-adds for one image)."""
  madds = model_stats.count_multiply_adds(model, input_shape)
  return model_stats.count_params(model), madds


def _head_counts(entry: ModelEntry, features: tf_keras.Model, resolution: int) -> Tuple[int, float]:
  """Parameters and multiply-adds of the entry's RetinaNet head on `features`' levels."""
  head = retinanet_head.RetinaNetHead(
    min_level=MIN_LEVEL,
    max_level=MAX_LEVEL,
    num_classes=NUM_CLASSES,
    num_anchors_per_location=NUM_ANCHORS,
    num_convs=entry.head_convs,
    num_filters=entry.head_filters,
    use_separable_conv=entry.separable_head,
  )
  return _count(head, _feature_shapes(features, resolution))


def _row(
  key: str,
  entry: ModelEntry,
  kind: str,
  resolution: int,
  counts: Tuple[int, float],
  published: Optional[Tuple[float, float]],
  breakdown: Dict[str, float],
  note: str,
  start: float,
) -> dict:
  """One row of the report: our counts, the published figures, the differences."""
  params, multiply_adds = counts
  notes = [
    n for n in (entry.note if kind != 'backbone' else '', note, NOTES.get((key, kind), '')) if n
  ]
  row = {
    'model': key,
    'name': entry.name,
    'family': entry.family,
    'model_id': entry.model_id,
    'kind': kind,
    'resolution': resolution,
    'params': params,
    'params_m': round(params / 1e6, 3),
    'published_params_m': published[0] if published else None,
    'multiply_adds': int(round(multiply_adds)),
    'multiply_adds_b': round(multiply_adds / 1e9, 3),
    'published_multiply_adds_b': published[1] if published else None,
    'breakdown': breakdown,
    'note': '; '.join(notes),
    'seconds': round(time.time() - start, 1),
  }
  if published:
    row['params_diff_pct'] = round(100.0 * (params / 1e6 / published[0] - 1.0), 1)
    row['multiply_adds_diff_pct'] = round(100.0 * (multiply_adds / 1e9 / published[1] - 1.0), 1)
  return row


def _detection_rows(
  key: str, entry: ModelEntry, backbone: tf_keras.Model, kinds: Sequence[str], resolution: int
) -> List[dict]:
  """The 'backbone' and 'retinanet' rows of one model (NAS-FPN: 'retinanet' only)."""
  start = time.time()
  backbone_params, backbone_madds = _count(backbone, [1, resolution, resolution, 3])
  if entry.nasfpn:
    return (
      [_nasfpn_row(key, entry, backbone, resolution, backbone_params, backbone_madds, start)]
      if 'retinanet' in kinds
      else []
    )
  rows = []
  if 'backbone' in kinds:
    filters = int(backbone.output_specs[str(MAX_LEVEL)][-1])
    rows.append(
      _row(
        key,
        entry,
        'backbone',
        resolution,
        (backbone_params, backbone_madds),
        None,
        {},
        f'endpoints: levels {MIN_LEVEL}-{MAX_LEVEL} x {filters} filters',
        start,
      )
    )
  if 'retinanet' in kinds:
    head_params, head_madds = _head_counts(entry, backbone, resolution)
    head_kind = 'separable ' if entry.separable_head else ''
    rows.append(
      _row(
        key,
        entry,
        'retinanet',
        resolution,
        (backbone_params + head_params, backbone_madds + head_madds),
        entry.published_retinanet,
        {
          'backbone_params': backbone_params,
          'head_params': head_params,
          'backbone_multiply_adds': backbone_madds,
          'head_multiply_adds': head_madds,
        },
        f'{head_kind}head {entry.head_convs}x{entry.head_filters}',
        start,
      )
    )
  return rows


def _nasfpn_row(
  key: str,
  entry: ModelEntry,
  backbone: tf_keras.Model,
  resolution: int,
  backbone_params: int,
  backbone_madds: float,
  start: float,
) -> dict:
  """RetinaNet with a NAS-FPN decoder: backbone + decoder + head."""
  num_repeats, num_filters = entry.nasfpn
  decoder = nasfpn.NASFPN(
    input_specs=backbone.output_specs,
    min_level=MIN_LEVEL,
    max_level=MAX_LEVEL,
    num_repeats=num_repeats,
    num_filters=num_filters,
  )
  decoder_params, decoder_madds = _count(decoder, _feature_shapes(backbone, resolution))
  head_params, head_madds = _head_counts(entry, decoder, resolution)
  note = (
    f'ResNet-{entry.model_id} (Model Garden) {backbone_params / 1e6:.2f}M / '
    f'{backbone_madds / 1e9:.1f}B, NAS-FPN {decoder_params / 1e6:.2f}M / '
    f'{decoder_madds / 1e9:.1f}B, head {entry.head_convs}x{entry.head_filters}'
  )
  counts = (
    backbone_params + decoder_params + head_params,
    backbone_madds + decoder_madds + head_madds,
  )
  return _row(
    key,
    entry,
    'retinanet',
    resolution,
    counts,
    entry.published_retinanet,
    {
      'backbone_params': backbone_params,
      'decoder_params': decoder_params,
      'head_params': head_params,
      'backbone_multiply_adds': backbone_madds,
      'decoder_multiply_adds': decoder_madds,
      'head_multiply_adds': head_madds,
    },
    note,
    start,
  )


class _Inference(tf_keras.layers.Layer):
  """A Mask R-CNN model's inference pass as a one-input layer, for counting.

  call(images [B, H, W, 3]) -> detection masks [B, MAX_DETECTIONS, 28, 28]: the
  backbone, the RPN, RoI generation, the box head on every proposal, NMS and the
  mask head on every detection.
  """

  def __init__(self, model: tf_keras.Model, **kwargs):
    super().__init__(**kwargs)
    self.model = model

  def call(self, images, training=False):
    del training  # counted at inference
    size = tf.shape(images)[1:3]
    image_shape = tf.tile(size[tf.newaxis], [tf.shape(images)[0], 1])
    return self.model(images, image_shape=image_shape, training=False)['detection_masks']


def build_maskrcnn(spec: MaskRCNNEntry, backbone: tf_keras.Model) -> tf_keras.Model:
  """The published Mask R-CNN (91 classes) around `backbone`, as a gin file builds it.

  Heads are Model Garden's with its defaults except where `spec` (the
  tensorflow/tpu yaml) differs: RPN of 1 conv, box head of `box_convs` convs
  + one FC, mask head of `mask_convs` convs, `spec.head_filters` wide. The
  weights equal those of the `gin_configs/maskrcnn/` model (see
  tests/test_maskrcnn_configs.py); only the NMS implementations differ.
  """
  filters = spec.head_filters
  return maskrcnn_model.build_maskrcnn_model(
    backbone,
    None,
    num_classes=NUM_CLASSES,
    min_level=MIN_LEVEL,
    max_level=MAX_LEVEL,
    num_scales=1,
    aspect_ratios=MASKRCNN_ASPECT_RATIOS,
    anchor_size=MASKRCNN_ANCHOR_SIZE,
    rpn_head_fn=functools.partial(maskrcnn_model.rpn_head, num_convs=1, num_filters=filters),
    detection_head_fn=functools.partial(
      maskrcnn_model.detection_head,
      num_convs=spec.box_convs,
      num_filters=filters,
      num_fcs=1,
      fc_dims=spec.fc_dims,
    ),
    mask_head_fn=functools.partial(
      maskrcnn_model.mask_head, num_convs=spec.mask_convs, num_filters=filters, upsample_factor=2
    ),
    # The NMS flavour changes no weight and no counted layer; the batched ones
    # trace in seconds where the per-class loops of the default take minutes.
    roi_generator_fn=functools.partial(
      maskrcnn_model.roi_generator,
      test_pre_nms_top_k=TEST_PROPOSALS,
      test_num_proposals=TEST_PROPOSALS,
      use_batched_nms=True,
    ),
    detection_generator_fn=functools.partial(
      maskrcnn_model.detection_generator,
      max_num_detections=MAX_DETECTIONS,
      nms_version='batched',
    ),
  )


def _maskrcnn_row(key: str, entry: ModelEntry, backbone: tf_keras.Model, resolution: int) -> dict:
  """Mask R-CNN: parameters and the multiply-adds of one traced inference pass."""
  start = time.time()
  spec = entry.maskrcnn
  model = build_maskrcnn(spec, backbone)
  inference = _Inference(model)
  # Weights from one eager call on a small image: quicker than a traced build.
  inference(tf.zeros([1, _BUILD_SIZE, _BUILD_SIZE, 3]))
  calls = model_stats.multiply_adds_by_layer(inference, [1, resolution, resolution, 3])
  parts = {
    'backbone': model.backbone,
    'rpn_head': model.rpn_head,
    'detection_head': model.detection_head[0],
    'mask_head': model.mask_head,
  }
  madds = model_stats.by_part(calls, parts)
  breakdown = {}
  for name, part in parts.items():
    breakdown[f'{name}_params'] = model_stats.count_params(part)
    breakdown[f'{name}_multiply_adds'] = madds[name]
  width = spec.head_filters
  note = (
    f'RPN 1x{width}, box head {spec.box_convs}x{width} + FC {spec.fc_dims} on '
    f'{TEST_PROPOSALS} proposals, mask head {spec.mask_convs}x{width} on '
    f'{MAX_DETECTIONS} detections'
  )
  counts = (model_stats.count_params(model), sum(madds.values()))
  return _row(key, entry, 'maskrcnn', resolution, counts, spec.published, breakdown, note, start)


def _classification_row(
  key: str, entry: ModelEntry, backbone: Optional[tf_keras.Model], resolution: int
) -> dict:
  """ImageNet classifier: the backbone + the paper's head (SpineNet Sec. 5) + Dense(1001).

  Args:
    key: the MODELS key.
    entry: its entry.
    backbone: the entry's backbone built for any multiple of 2^7, or None; used if
      `resolution` is one, otherwise a backbone is built for `resolution`.
    resolution: the square input size (ImageNet: 224).
  """
  start = time.time()
  if backbone is None or resolution % 2**MAX_LEVEL:
    backbone = _build_backbone(entry, resolution)
  head = classification_head.ClassificationHead(
    NUM_IMAGENET_CLASSES, min_level=MIN_LEVEL, max_level=MAX_LEVEL
  )
  model = classification_model.ClassificationModel(backbone, head)
  counts = _count(model, [1, resolution, resolution, 3])
  note = f'P{MIN_LEVEL}-P{MAX_LEVEL} fused, GAP, Dense({NUM_IMAGENET_CLASSES})'
  return _row(
    key,
    entry,
    'classification',
    resolution,
    counts,
    entry.published_classification,
    {},
    note,
    start,
  )


def compute_rows(
  model_keys: Sequence[str], kinds: Sequence[str], resolution_override: Optional[int] = None
) -> List[dict]:
  """Builds every requested model and returns one dict per (model, row kind).

  Args:
    model_keys: keys of MODELS.
    kinds: any of ROW_KINDS.
    resolution_override: count every model and row kind at this square size (a
      multiple of 128) instead of the paper's; for quick runs.

  Returns:
    Rows with our counts ('params', 'multiply_adds', ...), the published figures
    and the differences in percent; a model whose backbone cannot be imported
    gives one row of kind 'unavailable'.
  """
  rows = []
  for key in model_keys:
    entry = MODELS[key]
    resolution = resolution_override or entry.resolution
    detection_kinds = [k for k in kinds if k in ('retinanet', 'backbone')]
    maskrcnn = 'maskrcnn' in kinds and entry.maskrcnn is not None
    classify = 'classification' in kinds and entry.family == 'spinenet'
    cls_resolution = resolution_override or IMAGENET_RESOLUTION
    if not (detection_kinds or maskrcnn or classify):
      continue
    # Built for any multiple of 2^7, unless only a 224 classification row needs one.
    shared = detection_kinds or maskrcnn or not cls_resolution % 2**MAX_LEVEL
    try:
      backbone = None
      if shared:
        start = time.time()
        backbone = _build_backbone(entry)
        logging.info('Built %s in %.1f s.', key, time.time() - start)
    except ImportError as e:
      logging.warning('Skipping %s: %s', key, e)
      rows.append(
        {
          'model': key,
          'family': entry.family,
          'model_id': entry.model_id,
          'kind': 'unavailable',
          'note': f'backbone not importable: {e}',
        }
      )
      continue
    if detection_kinds:
      logging.info('Counting %s %s at %d.', key, detection_kinds, resolution)
      rows.extend(_detection_rows(key, entry, backbone, detection_kinds, resolution))
    if maskrcnn:
      mask_resolution = resolution_override or entry.maskrcnn.resolution
      logging.info('Counting %s Mask R-CNN at %d.', key, mask_resolution)
      rows.append(_maskrcnn_row(key, entry, backbone, mask_resolution))
    if classify:
      logging.info('Counting %s classification at %d.', key, cls_resolution)
      rows.append(_classification_row(key, entry, backbone, cls_resolution))
    del backbone
    tf_keras.backend.clear_session()
    gc.collect()
  return rows


def _table_cells(row: Mapping[str, Any]) -> List[Any]:
  """The text-table cells of one row (without the note)."""
  if row['kind'] == 'unavailable':
    return [row['model'], '-', '-', None, None, None, None]
  madds_digits = 2 if row['multiply_adds_b'] < 10 else 1
  published = row['published_multiply_adds_b']
  return [
    row['name'],
    row['kind'],
    str(row['resolution']),
    f"{row['params_m']:.2f}",
    None if row['published_params_m'] is None else f"{row['published_params_m']:.2f}",
    f"{row['multiply_adds_b']:.{madds_digits}f}",
    None if published is None else f'{published:.{madds_digits}f}',
  ]


def format_rows(rows: Sequence[Mapping[str, Any]]) -> str:
  """A fixed-width text table of the rows, each followed by its note."""
  header = ('model', 'kind', 'res', 'params M', 'pub. M', 'mult-adds B', 'pub. B')
  lines = tables.format_table(header, [_table_cells(r) for r in rows], left_columns=3).split('\n')
  # The note is free text of any length: it trails its row rather than widening a column.
  lines[0] += '  note'
  lines[1] = '-' * len(lines[0])
  for i, row in enumerate(rows):
    lines[i + 2] += f"  {row['note']}"
  lines.append(f'Multiply-adds: {MULTIPLY_ADDS_CONVENTION}.')
  return '\n'.join(lines)


def report(
  model_keys: Sequence[str],
  kinds: Sequence[str],
  resolution_override: Optional[int] = None,
  as_json: bool = False,
) -> str:
  """What `spinenet-stats` prints: the rows as a text table or as JSON.

  Args:
    model_keys: keys of MODELS, any case (e.g. '49s', 'mobile-49').
    kinds: any of ROW_KINDS, any case.
    resolution_override: see compute_rows; must be a multiple of 2^7.
    as_json: JSON ({'convention', 'resolution_override', 'rows'}) instead of a table.

  Raises:
    ValueError: an unknown model or kind, or a bad resolution_override.
  """
  model_keys = resolve_names(model_keys, MODELS, '--models')
  kinds = resolve_names(kinds, ROW_KINDS, '--include')
  if resolution_override and resolution_override % 2**MAX_LEVEL:
    raise ValueError(f'--resolution_override must be a multiple of {2**MAX_LEVEL}.')
  rows = compute_rows(model_keys, kinds, resolution_override)
  if as_json:
    return json.dumps(
      {
        'convention': MULTIPLY_ADDS_CONVENTION,
        'resolution_override': resolution_override,
        'rows': rows,
      },
      indent=1,
    )
  return format_rows(rows)
