"""Detection heads: the RetinaNet class/box head shared across pyramid levels."""
