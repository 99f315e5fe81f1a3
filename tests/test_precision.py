"""--mixed_precision=auto: bfloat16 only where the hardware computes it natively."""

import logging

import pytest

from official_spinenet.training import distribute
from official_spinenet.utils import cpu_features

_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse2 avx2 avx512f {extra}
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu sse2 avx2 avx512f {extra}
"""


@pytest.mark.parametrize(
  'extra, native',
  [('amx_bf16 amx_tile', True), ('avx512_bf16', True), ('avx512_vnni', False), ('', False)],
)
def test_native_bfloat16_is_read_from_the_cpu_flags(extra, native):
  flags = cpu_features.cpu_flags(_CPUINFO.format(extra=extra))
  assert 'avx2' in flags and 'spectre_v1' not in flags
  assert cpu_features.has_native_bfloat16(flags) is native


def test_no_cpuinfo_means_no_flags(monkeypatch, tmp_path):
  monkeypatch.setattr(cpu_features, 'CPUINFO', str(tmp_path / 'missing'))
  assert cpu_features.cpu_flags() == frozenset()
  assert not cpu_features.has_native_bfloat16()
  assert cpu_features.cpu_flags('processor\t: 0\n') == frozenset()


def test_auto_is_bfloat16_on_tpus_and_native_cpus_and_float32_elsewhere():
  # This machine has no GPU: one_device and mirrored run on the CPU.
  assert distribute.resolve_precision('auto', 'one_device', native_bfloat16=True) == 'bfloat16'
  assert distribute.resolve_precision('auto', 'mirrored', native_bfloat16=False) == 'float32'
  assert distribute.resolve_precision('auto', 'tpu', native_bfloat16=False) == 'bfloat16'
  for precision in distribute.PRECISIONS:
    assert distribute.resolve_precision(precision, 'one_device', native_bfloat16=False) == precision


def test_emulated_bfloat16_warns_and_bad_names_are_refused(caplog):
  with caplog.at_level(logging.WARNING):
    distribute.resolve_precision('bfloat16', 'one_device', native_bfloat16=True)
  assert 'slower than in float32' not in caplog.text
  with caplog.at_level(logging.WARNING):
    assert distribute.resolve_precision('bfloat16', 'one_device', native_bfloat16=False)
  assert 'without AVX512-BF16 or AMX-BF16' in caplog.text
  with pytest.raises(ValueError, match=r"Unknown --mixed_precision 'bf16'.*'auto'"):
    distribute.resolve_precision('bf16', 'one_device')
