"""Test setup: keep TensorFlow quiet and single-threaded per worker (2-core machines)."""
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_collection_modifyitems(config, items):
  # tf.test.TestCase inherits a deprecated `test_session` context manager that pytest
  # collects as a test and skips; it is not one of ours.
  items[:] = [item for item in items if item.name != 'test_session']


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: builds full-size models; deselect with -m "not slow"')
