"""Serving: SavedModel and TFLite export with pre/post-processing inside, a TF Serving client.

- `image_decoding`: checked decoding of request images (JPEG / PNG by magic bytes, other
  formats refused by name, size from the header) with messages that name the input.
- `preprocessing`: batch checks, normalize, resize-and-pad (the eval parser's steps as
  TF graph ops).
- `postprocessing`: NMS per image, boxes back to original-image pixels, Mask R-CNN
  masks pasted into the image (graph and host) and COCO RLE.
- `export_lib`: `export_saved_model(model, export_dir, input_image_size, ...)` for
  RetinaNet and Mask R-CNN models.
- `tflite_export`: `export_tflite(model, path, TFLiteConfig(...))`, `TFLiteDetector`.
- `client_lib`: pure request building / response parsing for TF Serving (REST, gRPC),
  image lists, category names, `describe_error` (the problem line of an error).
- `client_runner`: the network calls over a list of images (spinenet-serve-client).
- `drawing`: draws detections (and masks) on an image (PIL).

Nothing here imports gin (loading a model from a gin config is `workflows.loading`);
tf-models-official is loaded through `model_garden.load` inside the functions that
need it.
"""
