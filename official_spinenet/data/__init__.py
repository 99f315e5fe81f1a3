"""Data layer: tf.Example building, COCO to TFRecord conversion, synthetic shapes."""
