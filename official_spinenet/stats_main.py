r"""Parameters and multiply-adds of SpineNet / SpineNet-Mobile / NAS-FPN models vs. the papers.

  spinenet-stats                                # every model, a text table
  spinenet-stats --models=49,190 --json         # some models, JSON
  spinenet-stats --include=retinanet            # only the RetinaNet rows
  spinenet-stats --models=49 --json --resolution_override=256   # quick (tests)

or `python -m official_spinenet.stats_main ...`. Model ids: the SpineNet ids
49S, 49, 96, 143, 143L, 190, the SpineNet-Mobile ids mobile-49, mobile-49S,
mobile-49XS, and the RetinaNet NAS-FPN ids r50-nasfpn-3@256, r50-nasfpn-5@256,
r50-nasfpn-7@256, r50-nasfpn-7@384 (Model Garden's ResNet-50 + our NAS-FPN with
N repeats @ width, NAS-FPN paper Sec. 4.3 and Table 1). Row kinds (--include):

  retinanet       backbone + RetinaNetHead (91 classes, 9 anchors, levels 3-7) at the
                  paper's detection resolution. Head: 4 convs x 256 filters, except
                  49S (128 filters) and 190 (7 convs x 512); SpineNet-Mobile uses a
                  separable head as wide as its endpoints (48 / 40 / 24). NAS-FPN
                  rows: backbone + NAS-FPN decoder + 4 x 256 head.
  backbone        the backbone alone at the same resolution (no published figure;
                  not listed for the NAS-FPN rows, whose backbone is ResNet-50).
  classification  ImageNet: backbone at 224 + global average pool of the level-7
                  endpoint + Dense(1001). 224 is not divisible by 2^7, so the
                  backbone is counted at 256 and the multiply-adds scaled by
                  (224/256)^2 (conv multiply-adds are proportional to the area).

Multiply-adds are those of conv and dense layers for one image (the papers'
"FLOPs"; see `official_spinenet.modeling.model_stats`). Counting only traces the
model (no arithmetic) and each backbone is built once, for any input size, so the
1280-pixel models take seconds to count; building SpineNet-190 takes the longest.

--resolution_override=N replaces every resolution by N (a multiple of 128) for
quick runs, e.g. the tests' `--models=49 --json --resolution_override=256`.
"""

import dataclasses
import gc
import json
import os
import sys
import time
from typing import Dict, List, Optional, Tuple

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import tf_keras

from official_spinenet.modeling import model_stats
from official_spinenet.modeling.backbones import spinenet
from official_spinenet.modeling.decoders import nasfpn
from official_spinenet.modeling.heads import retinanet_head

FLAGS = flags.FLAGS

NUM_CLASSES = 91
NUM_ANCHORS = 9
NUM_IMAGENET_CLASSES = 1001
IMAGENET_RESOLUTION = 224
MIN_LEVEL, MAX_LEVEL = 3, 7
ROW_KINDS = ('retinanet', 'backbone', 'classification')
MULTIPLY_ADDS_CONVENTION = (
    'multiply-adds of conv and dense layers for one image (the papers\' "FLOPs"); '
    'batch norm, activations, pooling, resampling, additions and biases excluded')


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  """A published model: how to build it and what the papers report."""
  family: str  # 'spinenet', 'spinenet_mobile' or 'resnet' (Model Garden's)
  model_id: str
  resolution: int
  head_filters: int
  head_convs: int
  separable_head: bool = False
  published_retinanet: Optional[Tuple[float, float]] = None  # (params M, mult-adds B)
  published_classification: Optional[Tuple[float, float]] = None
  note: str = ''
  nasfpn: Optional[Tuple[int, int]] = None  # NAS-FPN decoder (num_repeats, num_filters)

  @property
  def name(self) -> str:
    if self.nasfpn:
      return f'R{self.model_id}-NAS-FPN {self.nasfpn[0]}@{self.nasfpn[1]}'
    prefix = 'SpineNet-Mobile-' if self.family == 'spinenet_mobile' else 'SpineNet-'
    return prefix + self.model_id


# SpineNet paper (Du et al., CVPR 2020) Tables 3 and 6; SpineNet-Mobile paper
# (Du et al., ECCV 2020). '143L' is a Model Garden variant without a published row.
MODELS = {
    '49S': ModelEntry('spinenet', '49S', 640, 128, 4, published_retinanet=(11.9, 33.8)),
    '49': ModelEntry('spinenet', '49', 640, 256, 4, published_retinanet=(28.5, 85.4),
                     published_classification=(22.1, 3.5)),
    '96': ModelEntry('spinenet', '96', 1024, 256, 4, published_retinanet=(43.0, 265.4),
                     published_classification=(36.5, 5.7)),
    '143': ModelEntry('spinenet', '143', 1280, 256, 4, published_retinanet=(67.0, 524.0),
                      published_classification=(60.5, 9.1)),
    '143L': ModelEntry('spinenet', '143L', 1280, 256, 4,
                       note='Model Garden variant (143 with filter_size_scale 1.3); '
                       'no published figure'),
    '190': ModelEntry('spinenet', '190', 1280, 512, 7, published_retinanet=(163.6, 1885.0),
                      published_classification=(127.1, 19.1)),
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

# Notes on rows whose published figure our count does not reproduce; keyed by
# (model key, row kind). From measurement: every other published row is matched
# within 0.3% (params) and 1.1% (multiply-adds).
NOTES = {
    ('49S', 'retinanet'): 'published figure does not reproduce from the published specs '
                          '(0.65x width, 128-filter endpoints and head give 5% fewer '
                          'params, 9% fewer mult-adds)',
}


def define_flags() -> None:
  """Defines this binary's flags (called from `run()`, never at import)."""
  flags.DEFINE_boolean('json', False, 'Print JSON instead of a text table.')
  flags.DEFINE_list('models', list(MODELS),
                    f'Model ids to report; any of {list(MODELS)}.')
  flags.DEFINE_list('include', list(ROW_KINDS), f'Row kinds; any of {list(ROW_KINDS)}.')
  flags.DEFINE_integer('resolution_override', None,
                       'If set, every model and row kind is counted at this square '
                       'resolution (a multiple of 128) instead of the paper\'s; for '
                       'quick runs and tests.', lower_bound=128)


def _build_backbone(entry: ModelEntry) -> tf_keras.Model:
  """The backbone for any input size: one build serves every resolution counted."""
  input_specs = [None, None, None, 3]
  if entry.family == 'spinenet':
    return spinenet.build_spinenet(entry.model_id, input_specs=input_specs)
  if entry.family == 'resnet':
    # Model Garden's ResNet (reused, not a seed system); importing official.vision
    # is slow, so only the NAS-FPN rows do it.
    from official_spinenet.modeling.backbones import resnet  # pylint: disable=g-import-not-at-top
    return resnet.build_resnet(entry.model_id, input_specs=input_specs)
  # Imported here: SpineNet rows must not depend on the mobile module.
  from official_spinenet.modeling.backbones import spinenet_mobile  # pylint: disable=g-import-not-at-top
  return spinenet_mobile.build_spinenet_mobile(entry.model_id, input_specs=input_specs)


def _build_decoder(entry: ModelEntry, backbone: tf_keras.Model) -> Optional[tf_keras.Model]:
  if not entry.nasfpn:
    return None
  num_repeats, num_filters = entry.nasfpn
  return nasfpn.NASFPN(input_specs=backbone.output_specs, min_level=MIN_LEVEL,
                       max_level=MAX_LEVEL, num_repeats=num_repeats, num_filters=num_filters)


def _endpoint_filters(features: tf_keras.Model) -> int:
  return int(features.output_specs[str(MAX_LEVEL)][-1])


def _feature_shapes(model: tf_keras.Model, resolution: int) -> Dict[str, list]:
  """Static [1, H_l, W_l, C_l] of a model's dict outputs for a square input."""
  return {level: [1, resolution // 2**int(level), resolution // 2**int(level), int(shape[-1])]
          for level, shape in model.output_specs.items()}


def _counted_resolution(resolution: int, stride: int = 2 ** MAX_LEVEL) -> int:
  """The smallest multiple of the backbone's coarsest stride at least `resolution`."""
  return -(-resolution // stride) * stride


def _row(key: str, entry: ModelEntry, kind: str, resolution: int, params: int,
         multiply_adds: float, published: Optional[Tuple[float, float]],
         breakdown: Dict[str, float], note: str, seconds: float) -> dict:
  notes = [n for n in (entry.note if kind != 'backbone' else '', note,
                       NOTES.get((key, kind), '')) if n]
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
      'seconds': round(seconds, 1),
  }
  if published:
    row['params_diff_pct'] = round(100.0 * (params / 1e6 / published[0] - 1.0), 1)
    row['multiply_adds_diff_pct'] = round(
        100.0 * (multiply_adds / 1e9 / published[1] - 1.0), 1)
  return row


def _detection_rows(key: str, entry: ModelEntry, backbone: tf_keras.Model,
                    kinds: List[str], resolution: int) -> List[dict]:
  start = time.time()
  backbone_params = model_stats.count_params(backbone)
  backbone_madds = model_stats.count_multiply_adds(backbone, [1, resolution, resolution, 3])
  decoder = _build_decoder(entry, backbone)
  rows = []
  if decoder is not None:
    if 'retinanet' in kinds:
      rows.append(_nasfpn_row(key, entry, backbone, decoder, resolution,
                              backbone_params, backbone_madds, start))
    return rows
  filters = _endpoint_filters(backbone)
  if 'backbone' in kinds:
    rows.append(_row(key, entry, 'backbone', resolution, backbone_params, backbone_madds,
                     None, {}, f'endpoints: levels {MIN_LEVEL}-{MAX_LEVEL} x {filters} '
                     'filters', time.time() - start))
  if 'retinanet' in kinds:
    head = retinanet_head.RetinaNetHead(
        min_level=MIN_LEVEL, max_level=MAX_LEVEL, num_classes=NUM_CLASSES,
        num_anchors_per_location=NUM_ANCHORS, num_convs=entry.head_convs,
        num_filters=entry.head_filters, use_separable_conv=entry.separable_head)
    head_madds = model_stats.count_multiply_adds(head, _feature_shapes(backbone, resolution))
    head_params = model_stats.count_params(head)
    head_kind = 'separable ' if entry.separable_head else ''
    rows.append(_row(
        key, entry, 'retinanet', resolution, backbone_params + head_params,
        backbone_madds + head_madds, entry.published_retinanet,
        {'backbone_params': backbone_params, 'head_params': head_params,
         'backbone_multiply_adds': backbone_madds, 'head_multiply_adds': head_madds},
        f'{head_kind}head {entry.head_convs}x{entry.head_filters}',
        time.time() - start))
  return rows


def _nasfpn_row(key: str, entry: ModelEntry, backbone: tf_keras.Model,
                decoder: tf_keras.Model, resolution: int, backbone_params: int,
                backbone_madds: int, start: float) -> dict:
  """RetinaNet with a NAS-FPN decoder: backbone + decoder + head."""
  decoder_madds = model_stats.count_multiply_adds(decoder, _feature_shapes(backbone, resolution))
  decoder_params = model_stats.count_params(decoder)
  head = retinanet_head.RetinaNetHead(
      min_level=MIN_LEVEL, max_level=MAX_LEVEL, num_classes=NUM_CLASSES,
      num_anchors_per_location=NUM_ANCHORS, num_convs=entry.head_convs,
      num_filters=entry.head_filters)
  head_madds = model_stats.count_multiply_adds(head, _feature_shapes(decoder, resolution))
  head_params = model_stats.count_params(head)
  note = (f'ResNet-{entry.model_id} (Model Garden) {backbone_params / 1e6:.2f}M / '
          f'{backbone_madds / 1e9:.1f}B, NAS-FPN {decoder_params / 1e6:.2f}M / '
          f'{decoder_madds / 1e9:.1f}B, head {entry.head_convs}x{entry.head_filters}')
  return _row(key, entry, 'retinanet', resolution,
              backbone_params + decoder_params + head_params,
              backbone_madds + decoder_madds + head_madds, entry.published_retinanet,
              {'backbone_params': backbone_params, 'decoder_params': decoder_params,
               'head_params': head_params, 'backbone_multiply_adds': backbone_madds,
               'decoder_multiply_adds': decoder_madds, 'head_multiply_adds': head_madds},
              note, time.time() - start)


def _classification_row(key: str, entry: ModelEntry, backbone: tf_keras.Model,
                        resolution: int) -> dict:
  start = time.time()
  counted = _counted_resolution(resolution)
  inputs = tf_keras.Input([None, None, 3])
  features = backbone(inputs)[str(MAX_LEVEL)]
  pooled = tf_keras.layers.GlobalAveragePooling2D()(features)
  logits = tf_keras.layers.Dense(NUM_IMAGENET_CLASSES)(pooled)
  model = tf_keras.Model(inputs, logits)
  params = model_stats.count_params(model)
  madds = model_stats.count_multiply_adds(model, [1, counted, counted, 3])
  note = f'GAP(P{MAX_LEVEL}) + Dense({NUM_IMAGENET_CLASSES})'
  if counted != resolution:
    # The backbone needs sizes divisible by 2^7; conv multiply-adds scale with area.
    madds *= (resolution / counted) ** 2
    note += f'; counted at {counted}, scaled by ({resolution}/{counted})^2'
  return _row(key, entry, 'classification', resolution, params, madds,
              entry.published_classification, {}, note, time.time() - start)


def compute_rows(model_keys: List[str], kinds: List[str],
                 resolution_override: Optional[int] = None) -> List[dict]:
  """Builds every requested model and returns one dict per (model, row kind)."""
  rows = []
  for key in model_keys:
    entry = MODELS[key]
    resolution = resolution_override or entry.resolution
    detection_kinds = [k for k in kinds if k in ('retinanet', 'backbone')]
    classify = 'classification' in kinds and entry.family == 'spinenet'
    if not detection_kinds and not classify:
      continue
    try:
      start = time.time()
      backbone = _build_backbone(entry)
      logging.info('Built %s in %.1f s.', key, time.time() - start)
    except ImportError as e:
      logging.warning('Skipping %s: %s', key, e)
      rows.append({'model': key, 'family': entry.family, 'model_id': entry.model_id,
                   'kind': 'unavailable', 'note': f'backbone not importable: {e}'})
      continue
    if detection_kinds:
      logging.info('Counting %s %s at %d.', key, detection_kinds, resolution)
      rows.extend(_detection_rows(key, entry, backbone, detection_kinds, resolution))
    if classify:
      cls_resolution = resolution_override or IMAGENET_RESOLUTION
      logging.info('Counting %s classification at %d.', key, cls_resolution)
      rows.append(_classification_row(key, entry, backbone, cls_resolution))
    del backbone
    tf_keras.backend.clear_session()
    gc.collect()
  return rows


def _fmt(value, digits: int) -> str:
  if value is None:
    return '-'
  return f'{value:.{digits}f}'


def format_table(rows: List[dict]) -> str:
  """A fixed-width text table of the rows."""
  header = ('model', 'kind', 'res', 'params M', 'pub. M', 'mult-adds B', 'pub. B', 'note')
  lines = []
  for r in rows:
    if r['kind'] == 'unavailable':
      lines.append((r['model'], '-', '-', '-', '-', '-', '-', r['note']))
      continue
    name = r['name']
    madds_digits = 2 if r['multiply_adds_b'] < 10 else 1
    lines.append((name, r['kind'], str(r['resolution']), _fmt(r['params_m'], 2),
                  _fmt(r['published_params_m'], 2), _fmt(r['multiply_adds_b'], madds_digits),
                  _fmt(r['published_multiply_adds_b'], 2 if madds_digits == 2 else 1),
                  r['note']))
  widths = [max(len(str(row[i])) for row in [header] + lines) for i in range(len(header) - 1)]
  out = []
  for row in [header] + lines:
    out.append('  '.join(str(c).ljust(w) if i < 3 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(row[:-1], widths))) + '  ' + row[-1])
    if row is header:
      out.append('-' * (sum(widths) + 2 * len(widths) + 4))
  out.append(f'Multiply-adds: {MULTIPLY_ADDS_CONVENTION}.')
  return '\n'.join(out)


def _parse_list(values: List[str], allowed, flag: str) -> List[str]:
  lookup = {a.upper(): a for a in allowed}
  out = []
  for v in values:
    if v.upper() not in lookup:
      raise app.UsageError(f'--{flag}: unknown value {v!r}; choose from {list(allowed)}.')
    out.append(lookup[v.upper()])
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  model_keys = _parse_list(FLAGS.models, MODELS, 'models')
  kinds = _parse_list(FLAGS.include, ROW_KINDS, 'include')
  if FLAGS.resolution_override and FLAGS.resolution_override % 2 ** MAX_LEVEL:
    raise app.UsageError(f'--resolution_override must be a multiple of {2 ** MAX_LEVEL}.')
  rows = compute_rows(model_keys, kinds, FLAGS.resolution_override)
  if FLAGS.json:
    print(json.dumps({'convention': MULTIPLY_ADDS_CONVENTION,
                      'resolution_override': FLAGS.resolution_override,
                      'rows': rows}, indent=1))
  else:
    print(format_table(rows))
  sys.stdout.flush()


def run():
  """Console-script entry point (`spinenet-stats`)."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
