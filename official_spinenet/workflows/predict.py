"""A detector or a classifier over image files (spinenet-predict): COCO results, or top-k.

The detector is an exported SavedModel (`saved_model_predictor`, its `image_bytes`
signature) or a gin config + checkpoint (`checkpoint_predictor`, the same serving module,
`export_lib.DetectionServingModule`, built in-process), so images are decoded, resized
and padded as at evaluation, and boxes come back in the pixels of each file.

`run_predict` writes to its output folder:
  detections.json   COCO results: [{"image_id", "category_id", "bbox": [x, y, w, h],
                    "score"}, ...] in original-image pixels (pycocotools loadRes reads it);
                    a Mask R-CNN model adds "segmentation", the mask in the image's
                    pixels as compressed COCO RLE ({"size": [h, w], "counts": str})
  images.json       {"images": [{"id", "file_name", "path", "height", "width",
                    "num_detections", "drawing"}], "categories": [...], "failed": [...]}:
                    the image id of each file (1, 2, ... in the order of the images, or
                    the ids of the annotation file, matched by file name)
  <image name>.png  each image with its detections scoring >= draw_min_score drawn
                    (masks filled in the class colour)
Crop masks (the default export, and a checkpoint) are pasted on the host with Model
Garden's `mask_ops.paste_instance_masks`, the Detectron paste the COCO evaluator scores
with, so detections.json scores as the training evaluation does.
Every file is written atomically (utils.files). An image that fails (corrupt, too
large, a format other than JPEG / PNG, or any other error) is printed as
`FAILED <path>: <problem>` (client_lib.describe_error: the export's message, e.g.
`image_bytes[0]: GIF is not supported; send JPEG or PNG`), listed in
images.json["failed"], and the others carry on.

A classifier (a classification export, or a ClassificationTask config + checkpoint; then
`ClassifierPredictor`, through `classification_export.ClassificationServingModule`: the
eval preprocessing, softmax, top-k) makes `run_classify` write instead:
  classifications.jsonl  JSON lines, one per image in the order of the images:
                         {"path", "file_name", "classes": [k ids, 0-based], "scores":
                         [k softmax probabilities], "class_names": [k names]}, best
                         first; an image that failed: {"path", "file_name", "error"}
and spinenet-predict prints one line per image ("<path>: <name> <score>, ..."). JSON
lines stream (a line per image, readable with `jq` or pandas.read_json(lines=True)) and
keep the failures in their place. Drawings, --annotation_file and category names are for
detectors; a classifier's names come from its export (its class-names file).
"""

import dataclasses
import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from absl import logging
import tensorflow as tf

from official_spinenet.data import coco_tfrecord
from official_spinenet.evaluation import instance_masks
from official_spinenet.serving import classification_export
from official_spinenet.serving import client_lib
from official_spinenet.serving import drawing
from official_spinenet.serving import export_lib
from official_spinenet.serving import postprocessing
from official_spinenet.serving import preprocessing
from official_spinenet.tasks import classification_task
from official_spinenet.utils import checkpoint_paths
from official_spinenet.utils import files
from official_spinenet.workflows import loading

DETECTIONS_FILE = 'detections.json'
IMAGES_FILE = 'images.json'
CLASSIFICATIONS_FILE = 'classifications.jsonl'

Detect = Callable[[Sequence[bytes]], List[client_lib.ImageDetections]]
Classify = Callable[[Sequence[bytes]], List[client_lib.ImageClassification]]


@dataclasses.dataclass
class Predictor:
  """A detector over encoded images.

  Attributes:
    detect: list of JPEG / PNG bytes (any sizes) -> one ImageDetections per image
      (boxes [N, 4] ymin, xmin, ymax, xmax in original pixels, scores [N], classes [N]).
      Raises tf.errors.InvalidArgumentError for a bad image in the batch.
    category_names: class id -> name (may be empty).
    description: where the model came from (for images.json and logs).
  """

  detect: Detect
  category_names: Dict[int, str]
  description: str


@dataclasses.dataclass
class ClassifierPredictor:
  """A classifier over encoded images.

  Attributes:
    classify: list of JPEG / PNG bytes (any sizes) -> one ImageClassification per image
      (its top-k classes, softmax scores and names, best first). Raises
      tf.errors.InvalidArgumentError for a bad image in the batch.
    description: where the model came from (for logs).
  """

  classify: Classify
  description: str


def _detect_fn(
  signature: Callable[..., Dict[str, tf.Tensor]],
  fixed_batch_size: Optional[int],
  parse: Callable[..., list] = client_lib.detections_from_outputs,
) -> Detect:
  """Wraps a string [B] -> outputs function; pads a short batch to a fixed batch size.

  parse turns the numpy outputs into per-image results (detections by default).
  """

  def detect(encoded: Sequence[bytes]) -> List[client_lib.ImageDetections]:
    encoded = list(encoded)
    count = len(encoded)
    if fixed_batch_size:
      if count > fixed_batch_size:
        raise ValueError(
          f'The export takes batches of {fixed_batch_size} images, got '
          f'{count}; use --batch_size={fixed_batch_size}.'
        )
      encoded += [encoded[-1]] * (fixed_batch_size - count)
    outputs = signature(tf.constant(encoded, dtype=tf.string))
    return parse({k: v.numpy() for k, v in outputs.items()})[:count]

  return detect


def saved_model_predictor(export_dir: str) -> Union[Predictor, ClassifierPredictor]:
  """The `image_bytes` signature of a spinenet-export SavedModel.

  Returns:
    A Predictor for a detector's export, a ClassifierPredictor for a classifier's.

  Raises:
    ValueError: no SavedModel there, no image_bytes signature, or an export without
      NMS (apply_nms=False).
  """
  if not tf.saved_model.contains_saved_model(export_dir):
    raise ValueError(f'--saved_model {export_dir!r} holds no SavedModel (saved_model.pb).')
  loaded = tf.saved_model.load(export_dir)
  if export_lib.DEFAULT_SIGNATURE not in loaded.signatures:
    raise ValueError(
      f'The SavedModel in {export_dir} has no {export_lib.DEFAULT_SIGNATURE!r} '
      f'signature (it has {sorted(loaded.signatures)}); export it with '
      'spinenet-export.'
    )
  signature = loaded.signatures[export_lib.DEFAULT_SIGNATURE]
  outputs = signature.structured_outputs
  classifier = client_lib.is_classification(outputs)
  if 'detection_boxes' not in outputs and not classifier:
    raise ValueError(
      f'The SavedModel in {export_dir} returns {sorted(outputs)}, neither detections '
      '(exported with apply_nms=False?) nor classes; export it again with NMS.'
    )
  input_name = export_lib.SIGNATURE_INPUTS[export_lib.DEFAULT_SIGNATURE][0]
  config_path = os.path.join(export_dir, export_lib.EXTRA_ASSETS_DIR, export_lib.EXPORT_CONFIG_FILE)
  config = export_lib.read_export_config(export_dir) if os.path.exists(config_path) else {}
  batch_size = config.get('options', {}).get('batch_size')

  def call(encoded):
    return signature(**{input_name: encoded})

  # The loaded object owns the variables the signature reads: keep it alive.
  call.loaded = loaded
  description = f'SavedModel {export_dir}'
  if classifier:
    parse = client_lib.classifications_from_outputs
    return ClassifierPredictor(_detect_fn(call, batch_size, parse), description)
  names = client_lib.load_category_names(config.get('category_names'))
  return Predictor(_detect_fn(call, batch_size), names, description)


def checkpoint_predictor(
  gin_files: Sequence[str],
  gin_params: Sequence[str],
  checkpoint: str,
  *,
  score_threshold: Optional[float] = None,
  max_detections: Optional[int] = None,
  nms_iou_threshold: Optional[float] = None,
  max_image_pixels: int = preprocessing.DEFAULT_MAX_IMAGE_PIXELS,
) -> Union[Predictor, ClassifierPredictor]:
  """The gin config's model with checkpoint weights, run through the serving module.

  The NMS options default to the task's evaluation settings, as in spinenet-export;
  Mask R-CNN's masks come as crop masks (pasted on the host). A ClassificationTask
  config gives a ClassifierPredictor (the task's top_k and class names).

  Raises:
    ValueError: bad gin config or checkpoint, or NMS options for a classifier.
  """
  task = loading.build_task(gin_files, gin_params)
  path = checkpoint_paths.resolve_checkpoint(checkpoint)
  if isinstance(task, classification_task.ClassificationTask):
    nms = dict(
      score_threshold=score_threshold,
      max_detections=max_detections,
      nms_iou_threshold=nms_iou_threshold,
    )
    _refuse_for_classifier(task, {f'--{k}': v for k, v in nms.items()})
    loaded = loading.build_and_restore(task, path, gin_files, gin_params)
    return _classifier_from_checkpoint(loaded, max_image_pixels)
  loaded = loading.build_and_restore(task, path, gin_files, gin_params)
  config = export_lib.make_export_config(
    loaded.model,
    loaded.task.image_size,
    **loading.task_nms_options(loaded.task, score_threshold, max_detections, nms_iou_threshold),
    max_image_pixels=max_image_pixels,
  )
  module = export_lib.DetectionServingModule(loaded.model, config)
  serve = tf.function(
    module.serve_image_bytes, autograph=False, input_signature=[tf.TensorSpec([None], tf.string)]
  )
  return Predictor(
    _detect_fn(serve, None), {}, f'checkpoint {loaded.checkpoint_path} ({", ".join(gin_files)})'
  )


def _refuse_for_classifier(model: Any, options: Dict[str, Any]) -> None:
  """ValueError naming the detector-only options (flag -> value) given for a classifier."""
  given = [name for name, value in options.items() if value not in (None, '', [], (), {})]
  if given:
    what = type(model).__name__ if not isinstance(model, str) else model
    raise ValueError(
      f'{", ".join(given)}: for detectors, but the model is a classifier ({what}); it '
      'predicts the top-k classes of each image with the names of its class-names file.'
    )


def _classifier_from_checkpoint(
  loaded: loading.LoadedModel, max_image_pixels: int
) -> ClassifierPredictor:
  """A ClassificationTask's model through the classifier serving module (its top_k)."""
  task = loaded.task
  config = classification_export.ClassificationExportConfig(
    input_image_size=tuple(task.image_size), top_k=task.top_k, max_image_pixels=max_image_pixels
  )
  module = classification_export.ClassificationServingModule(
    loaded.model, config, task.class_names()
  )
  serve = tf.function(
    module.serve_image_bytes, autograph=False, input_signature=[tf.TensorSpec([None], tf.string)]
  )
  return ClassifierPredictor(
    _detect_fn(serve, None, client_lib.classifications_from_outputs),
    f'checkpoint {loaded.checkpoint_path} ({type(task).__name__})',
  )


def assign_image_ids(
  paths: Sequence[str], annotations: Optional[coco_tfrecord.CocoInstances] = None
) -> Dict[str, int]:
  """Image id per path: 1, 2, ... in order, or the annotation file's id of its file name.

  A path matches an annotation `file_name` when it ends with it (file names with
  folders) or has the same base name.

  Raises:
    ValueError: images missing from the annotation file, or two paths with one id.
  """
  if annotations is None:
    return {path: i + 1 for i, path in enumerate(paths)}
  annotation_file = annotations.annotation_file
  by_name, by_base = {}, {}
  for image in annotations.images:
    name = image['file_name'].replace('\\', '/')
    by_name[name] = image['id']
    by_base.setdefault(os.path.basename(name), []).append(image['id'])
  ids, missing = {}, []
  for path in paths:
    normal = path.replace('\\', '/')
    exact = [i for name, i in by_name.items() if normal == name or normal.endswith('/' + name)]
    base = by_base.get(os.path.basename(normal), [])
    found = exact or (base if len(base) == 1 else [])
    if len(found) == 1:
      ids[path] = found[0]
    else:
      missing.append(path)
  if missing:
    raise ValueError(
      f'{len(missing)} image(s) have no unique entry in --annotation_file '
      f'{annotation_file} (matched by file_name): {missing[:5]}'
    )
  seen = {}
  for path, image_id in ids.items():
    if image_id in seen:
      raise ValueError(
        f'{seen[image_id]} and {path} both match image id {image_id} of {annotation_file}.'
      )
    seen[image_id] = path
  return ids


def coco_results(image_id: int, detections: client_lib.ImageDetections) -> List[Dict[str, Any]]:
  """COCO results entries (bbox = [x, y, width, height] pixels) of one image.

  With masks, each entry also has 'segmentation': the mask in the image's pixels as
  compressed RLE. pycocotools' loadRes then takes the entry's area from the bbox;
  COCO's own segm results files carry no bbox, so their areas are the masks' (for
  APs / APm / APl of masks exactly as COCO scores them, drop 'bbox' before loadRes).
  """
  results = []
  for (ymin, xmin, ymax, xmax), score, cls in zip(
    detections.boxes, detections.scores, detections.classes
  ):
    results.append(
      {
        'image_id': int(image_id),
        'category_id': int(cls),
        'bbox': [float(xmin), float(ymin), float(xmax - xmin), float(ymax - ymin)],
        'score': float(score),
      }
    )
  if detections.masks is not None:
    masks = postprocessing.image_masks(detections.masks, detections.boxes, detections.image_size)
    for result, mask in zip(results, masks):
      result['segmentation'] = instance_masks.encode_rle(mask)
  return results


def _detect_batch(detect: Callable, paths: Sequence[str], encoded: Sequence[bytes]):
  """[(path, result or None, problem or None)]; a failed batch is retried image by image.

  detect: a Predictor's detect or a ClassifierPredictor's classify. Whatever it raises
  (a refused image, or any other error) fails the images, never the run.
  """
  outcomes = client_lib.predict_each(detect, encoded)
  return [(path, result, problem) for path, (result, problem) in zip(paths, outcomes)]


def _report_failure(failed: List[Dict[str, str]], path: str, problem: str) -> None:
  """Records a failed image and says so as it happens: FAILED <path>: <problem>."""
  print(f'FAILED {path}: {problem}', flush=True)
  failed.append({'path': path, 'error': problem})


def _image_entry(
  image_id: int, path: str, detections: client_lib.ImageDetections
) -> Dict[str, Any]:
  return {
    'id': image_id,
    'file_name': os.path.basename(path),
    'path': path,
    'height': int(detections.image_size[0]),
    'width': int(detections.image_size[1]),
    'num_detections': int(len(detections.scores)),
    'drawing': None,
  }


def run_predict(
  predictor: Predictor,
  images: Sequence[str],
  output_dir: str,
  *,
  annotation_file: Optional[str] = None,
  category_names: Optional[Dict[int, str]] = None,
  batch_size: int = 8,
  draw: bool = True,
  draw_min_score: float = 0.3,
  show_progress: bool = True,
) -> Dict[str, Any]:
  """Runs the predictor over the images and writes detections.json, images.json, PNGs.

  Args:
    predictor: from saved_model_predictor or checkpoint_predictor.
    images: files, folders (their .jpg / .jpeg / .png) and globs.
    output_dir: created if missing.
    annotation_file: optional COCO annotation file: image ids (by file name) and
      category names come from it.
    category_names: class id -> name; overrides the model's and the annotation file's.
    batch_size: images per call.
    draw: write one PNG per image with its detections drawn.
    draw_min_score: draw the detections scoring at least this (all are in the JSON).
    show_progress: a progress line on stderr (absl log lines when not a terminal).

  Returns:
    {'images': [...], 'failed': [...], 'num_detections': int, 'detections_file': path,
     'images_file': path}.

  Raises:
    ValueError: no images found, or images missing from the annotation file.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  paths = client_lib.find_images(images)
  annotations = coco_tfrecord.load_coco_instances(annotation_file) if annotation_file else None
  ids = assign_image_ids(paths, annotations)
  names = dict(predictor.category_names)
  if annotations is not None:
    names.update(annotations.category_names)
  names.update(category_names or {})
  tf.io.gfile.makedirs(output_dir)
  drawings = dict(zip(paths, client_lib.drawing_names(paths)))
  logging.info('Predicting %d image(s) with %s.', len(paths), predictor.description)

  results, entries, failed = [], [], []
  progress = coco_tfrecord.TextProgress(len(paths), 'Predicting', enabled=show_progress)
  for batch_paths in client_lib.batches(paths, batch_size):
    encoded = client_lib.read_files(batch_paths)
    for (path, detections, error), data in zip(
      _detect_batch(predictor.detect, batch_paths, encoded), encoded
    ):
      if error is not None:
        _report_failure(failed, path, error)
        continue
      results.extend(coco_results(ids[path], detections))
      entries.append(_image_entry(ids[path], path, detections))
      if draw:
        entries[-1]['drawing'] = drawings[path]
        drawing.save_drawing(
          data, detections.above(draw_min_score), names, os.path.join(output_dir, drawings[path])
        )
    progress.update(len(batch_paths))
  progress.close()

  detections_file = os.path.join(output_dir, DETECTIONS_FILE)
  images_file = os.path.join(output_dir, IMAGES_FILE)
  files.write_json_atomically(results, detections_file)
  files.write_json_atomically(
    {
      'images': entries,
      'categories': [{'id': i, 'name': n} for i, n in sorted(names.items())],
      'failed': failed,
      'model': predictor.description,
      'annotation_file': annotation_file,
      'draw_min_score': draw_min_score if draw else None,
    },
    images_file,
  )
  return {
    'images': entries,
    'failed': failed,
    'num_detections': len(results),
    'detections_file': detections_file,
    'images_file': images_file,
  }


def run_classify(
  predictor: ClassifierPredictor,
  images: Sequence[str],
  output_dir: str,
  *,
  batch_size: int = 8,
  show_progress: bool = True,
) -> Dict[str, Any]:
  """Runs a classifier over the images and writes classifications.jsonl (module docstring).

  Args:
    predictor: a ClassifierPredictor (saved_model_predictor or checkpoint_predictor).
    images: files, folders (their .jpg / .jpeg / .png) and globs.
    output_dir: created if missing.
    batch_size: images per call.
    show_progress: a progress line on stderr (absl log lines when not a terminal).

  Returns:
    {'images': [the JSON line of each image classified], 'failed': [{'path', 'error'}],
     'classifications_file': path}.

  Raises:
    ValueError: no images found.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  paths = client_lib.find_images(images)
  tf.io.gfile.makedirs(output_dir)
  logging.info('Classifying %d image(s) with %s.', len(paths), predictor.description)
  lines, entries, failed = [], [], []
  progress = coco_tfrecord.TextProgress(len(paths), 'Classifying', enabled=show_progress)
  for batch_paths in client_lib.batches(paths, batch_size):
    encoded = client_lib.read_files(batch_paths)
    for path, result, error in _detect_batch(predictor.classify, batch_paths, encoded):
      line = {'path': path, 'file_name': os.path.basename(path)}
      if error is not None:
        _report_failure(failed, path, error)
        line['error'] = error
      else:
        line.update(result.as_json())
        entries.append(line)
      lines.append(line)
    progress.update(len(batch_paths))
  progress.close()
  classifications_file = os.path.join(output_dir, CLASSIFICATIONS_FILE)
  files.atomic_write(classifications_file, ''.join(json.dumps(line) + '\n' for line in lines))
  return {'images': entries, 'failed': failed, 'classifications_file': classifications_file}


def _check_model_source(
  saved_model, gin_files, gin_params, checkpoint, nms_options: Dict[str, Any]
) -> None:
  """A SavedModel alone, or gin files and a checkpoint (with options)."""
  if not saved_model:
    if not (gin_files and checkpoint):
      raise ValueError('Give --saved_model, or --gin_file and --checkpoint.')
    return
  checkpoint_only = {
    'gin_file': gin_files,
    'gin_param': gin_params,
    'checkpoint': checkpoint,
    **nms_options,
  }
  given = ['--' + k for k, v in checkpoint_only.items() if v not in (None, [], ())]
  if given:
    raise ValueError(
      f'--saved_model runs the export as it is; do not combine it with '
      f'{", ".join(given)} (NMS options are fixed at export time).'
    )


def predict(
  images: Sequence[str],
  output_dir: str,
  *,
  saved_model: Optional[str] = None,
  gin_files: Sequence[str] = (),
  gin_params: Sequence[str] = (),
  checkpoint: Optional[str] = None,
  nms_options: Optional[Dict[str, Any]] = None,
  category_names: client_lib.CategoryNamesSource = None,
  annotation_file: Optional[str] = None,
  **run_options,
) -> Dict[str, Any]:
  """What spinenet-predict runs: cheap checks, then the predictor, then run_predict.

  A classifier (a classification export or config) runs run_classify instead; draw and
  draw_min_score are then unused.

  Images, class names and the annotation file are checked before the model loads.

  Args:
    images, output_dir, annotation_file: see run_predict.
    saved_model: a spinenet-export folder; or else gin_files, gin_params and
      checkpoint (see loading.load_model).
    nms_options: checkpoint only: score_threshold, max_detections, nms_iou_threshold
      (None: the task's evaluation settings).
    category_names: see client_lib.load_category_names.
    **run_options: batch_size, draw, draw_min_score, show_progress (see run_predict).

  Returns:
    run_predict's summary (a classifier: run_classify's).

  Raises:
    ValueError: naming the problem (model, images, names, annotation file).
  """
  _check_model_source(saved_model, gin_files, gin_params, checkpoint, nms_options or {})
  names = client_lib.load_category_names(category_names)
  paths = client_lib.find_images(images)
  if annotation_file:
    assign_image_ids(paths, coco_tfrecord.load_coco_instances(annotation_file))
  if saved_model:
    predictor = saved_model_predictor(saved_model)
  else:
    predictor = checkpoint_predictor(gin_files, gin_params, checkpoint, **(nms_options or {}))
  if isinstance(predictor, ClassifierPredictor):
    given = {'--annotation_file': annotation_file, '--category_names_json': category_names}
    _refuse_for_classifier(predictor.description, given)
    return run_classify(
      predictor,
      paths,
      output_dir,
      batch_size=run_options.get('batch_size', 8),
      show_progress=run_options.get('show_progress', True),
    )
  return run_predict(
    predictor,
    paths,
    output_dir,
    annotation_file=annotation_file,
    category_names=names,
    **run_options,
  )
