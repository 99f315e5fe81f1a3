"""What this CPU computes natively: bfloat16 matmuls and convolutions, or not.

oneDNN runs bfloat16 at full speed only on AVX512-BF16 or AMX-BF16 CPUs; elsewhere
(AVX2-only CPUs, AVX-512 without BF16) it converts to float32 and back around every
kernel, which makes mixed bfloat16 slower than float32 there.
"""

from typing import FrozenSet, Optional

CPUINFO = '/proc/cpuinfo'
NATIVE_BFLOAT16_FLAGS = frozenset({'avx512_bf16', 'amx_bf16'})


def cpu_flags(cpuinfo_text: Optional[str] = None) -> FrozenSet[str]:
  """The first processor's feature flags in /proc/cpuinfo (empty where there is none).

  cpuinfo_text: the file's text instead of reading it (tests).
  """
  if cpuinfo_text is None:
    try:
      with open(CPUINFO, encoding='utf-8') as f:
        cpuinfo_text = f.read()
    except OSError:  # not Linux
      return frozenset()
  for line in cpuinfo_text.splitlines():
    key, _, value = line.partition(':')
    if key.strip() == 'flags':
      return frozenset(value.split())
  return frozenset()


def has_native_bfloat16(flags: Optional[FrozenSet[str]] = None) -> bool:
  """True if the CPU has AVX512-BF16 or AMX-BF16 (`flags`: cpu_flags() by default)."""
  return bool(NATIVE_BFLOAT16_FLAGS & (cpu_flags() if flags is None else flags))
