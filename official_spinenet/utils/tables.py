"""Plain-text and Markdown tables for the binaries' and tools' reports."""

from typing import Any, Optional, Sequence


def _cell(value: Any, digits: int) -> str:
  if value is None:
    return '-'
  if isinstance(value, float):
    return f'{value:.{digits}f}'
  return str(value)


def format_table(
  header: Sequence[str],
  rows: Sequence[Sequence[Any]],
  *,
  markdown: bool = False,
  digits: int = 3,
  left_columns: Optional[int] = 1,
) -> str:
  """A table of `rows` under `header`.

  Args:
    header: column titles.
    rows: one sequence of values per row; floats get `digits` decimals, None is '-'.
      Pre-formatted strings are kept as they are.
    markdown: a GitHub Markdown table (numbers right-aligned) instead of fixed width.
    digits: decimals of float cells.
    left_columns: how many leading columns are left-aligned (names); the rest are
      right-aligned (numbers). None: all left-aligned.

  Returns:
    The table as one string (no trailing newline).
  """
  cells = [[_cell(v, digits) for v in row] for row in rows]
  for i, row in enumerate(cells):
    if len(row) != len(header):
      raise ValueError(f'Row {i} has {len(row)} cells for {len(header)} columns.')
  num_left = len(header) if left_columns is None else left_columns
  if markdown:
    align = ['---' if i < num_left else '---:' for i in range(len(header))]
    lines = [header, align] + cells
    return '\n'.join('| ' + ' | '.join(line) + ' |' for line in lines)
  widths = [max(len(r[i]) for r in [list(header)] + cells) for i in range(len(header))]

  def line(row):
    return '  '.join(
      c.ljust(w) if i < num_left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))
    ).rstrip()

  out = [line(header), '-' * (sum(widths) + 2 * (len(widths) - 1))]
  out += [line(row) for row in cells]
  return '\n'.join(out)
