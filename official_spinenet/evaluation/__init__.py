"""Evaluation: COCO box metrics with pycocotools (coco_evaluator.COCOEvaluator)."""
