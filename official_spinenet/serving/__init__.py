"""Serving: SavedModel export with pre/post-processing inside, and a TF Serving client.

- `preprocessing`: decode, validate, normalize, resize-and-pad (the eval parser's steps
  as TF graph ops).
- `postprocessing`: NMS per image, boxes back to original-image pixels.
- `export_lib`: `export_saved_model(model, export_dir, input_image_size, ...)`.
- `client_lib`: pure request building / response parsing for TF Serving (REST, gRPC).
- `drawing`: draws detections on an image (PIL).
- `serve_client`: the `spinenet-serve-client` absl binary (network calls).

Nothing here imports gin; Model Garden (`official.vision`) is imported inside the
functions that need it.
"""
