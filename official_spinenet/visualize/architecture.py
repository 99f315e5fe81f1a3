"""Draws a scale-permuted network the way Fig. 1 / Fig. 4 of the SpineNet paper do.

Blocks are laid out left to right in build order (stem blocks first) at the height
of their feature level, so the scale permutation reads as the up-and-down path of
the blocks and the cross-scale connections as arrows between them. The figure is
written with matplotlib's Agg (PNG) and SVG backends without touching pyplot, so
drawing never opens a window or changes a caller's global backend.

The two graph helpers, `zero_out_degree_merges` and `unused_blocks`, apply the rules
the backbones are built with (`modeling/topology.py`), so the drawing shows the
network that actually runs: blocks that no endpoint depends on are drawn faded, and
the hidden "sum into the output of the same level and width" connections are drawn
as dashed arrows.
"""

import dataclasses
import os
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

import matplotlib
from matplotlib import patches
from matplotlib import transforms
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
import numpy as np

from official_spinenet.modeling import topology
from official_spinenet.modeling.backbones import spinenet_specs
from official_spinenet.modeling.decoders import nasfpn_specs
from official_spinenet.utils import files

BlockSpec = spinenet_specs.BlockSpec

# Fill colours per block type; light so the black block numbers stay legible.
BLOCK_COLORS = {
  spinenet_specs.BOTTLENECK: '#a6cee3',
  spinenet_specs.RESIDUAL: '#fdbf6f',
  spinenet_specs.MBCONV: '#b2df8a',
  # NAS-FPN: merging cells by binary op; the input pyramid (from the backbone).
  nasfpn_specs.SUM: '#cab2d6',
  nasfpn_specs.GLOBAL_ATTENTION: '#fb9a99',
  'input': '#e0e0e0',
}
# Edge colours per resampling direction (parent level -> block level).
EDGE_COLORS = {
  'down': '#1f5fa8',  # to a coarser level: strided conv / pooling.
  'up': '#2e8b3a',  # to a finer level: nearest-neighbour upsampling.
  'same': '#666666',  # same level: 1x1 conv only.
}
MERGE_COLOR = '#7b3294'
OUTPUT_EDGE_COLOR = '#d62728'
UNUSED_ALPHA = 0.3
# Block sizes in inches: fixed physical sizes keep the shapes undistorted however
# wide the level rows are.
_BLOCK_HALF_WIDTH = 0.17
_BLOCK_HALF_HEIGHT = 0.13


@dataclasses.dataclass(frozen=True)
class Architecture:
  """A published architecture: its block specs and the stem that precedes them."""

  block_specs: Tuple
  stem_levels: Tuple[int, ...]
  stem_block_fn: str
  title: str


ARCHITECTURES = {
  'spinenet': Architecture(
    spinenet_specs.SPINENET_BLOCK_SPECS, (2, 2), spinenet_specs.BOTTLENECK, 'SpineNet-49'
  ),
  'spinenet_mobile': Architecture(
    spinenet_specs.SPINENET_MOBILE_BLOCK_SPECS, (1, 2), spinenet_specs.MBCONV, 'SpineNet-Mobile-49'
  ),
}


# Block types as the drawing API takes them: one for every stem block, or one each.
StemBlockFns = Union[str, Sequence[str]]


def _as_specs(block_specs: Sequence) -> List[BlockSpec]:
  return [BlockSpec.from_any(s) for s in block_specs]


def _stem_block_fns(stem_block_fn: StemBlockFns, num_stem: int) -> List[str]:
  fns = [stem_block_fn] * num_stem if isinstance(stem_block_fn, str) else list(stem_block_fn)
  if len(fns) != num_stem:
    raise ValueError(f'Got {len(fns)} stem block types for {num_stem} stem blocks.')
  return fns


def _graph(block_specs: Sequence, stem_levels: Sequence[int], stem_block_fn: StemBlockFns):
  """(specs, stem nodes, node_of) for the `topology` rules.

  The blocks of one level share a base width (the filter maps are per level), so
  their channel counts differ only by the block type's expansion: that is what the
  merge rule compares here, as the backbones compare channels.
  """

  def node_of(level: int, block_fn: str) -> topology.Node:
    return topology.Node(level, spinenet_specs.block_output_channels(block_fn, 1))

  stem = [
    node_of(level, fn)
    for level, fn in zip(stem_levels, _stem_block_fns(stem_block_fn, len(stem_levels)))
  ]
  return _as_specs(block_specs), stem, lambda spec: node_of(spec.level, spec.block_fn)


def block_levels(block_specs: Sequence, stem_levels: Sequence[int]) -> List[int]:
  """Levels of all blocks in network order: the stem blocks, then the specs.

  Args:
    block_specs: BlockSpecs (or tuples/dicts accepted by `BlockSpec.from_any`).
    stem_levels: level of each stem block, e.g. (2, 2) for SpineNet.

  Returns:
    One level per network index.
  """
  return list(stem_levels) + [s.level for s in _as_specs(block_specs)]


def zero_out_degree_merges(
  block_specs: Sequence,
  stem_levels: Sequence[int],
  stem_block_fn: StemBlockFns = spinenet_specs.BOTTLENECK,
) -> List[Tuple[int, int]]:
  """Finds the blocks that the backbone sums, unresampled, into a later output block.

  The backbone keeps every block useful: when an output block is built, each earlier
  block (stem included) of the same level and channel count that nothing has
  consumed yet is added to it (`topology.merge_unconsumed`); a residual block is not
  added to a bottleneck output block, which is 4x wider.

  Args:
    block_specs: BlockSpecs (or tuples/dicts accepted by `BlockSpec.from_any`).
    stem_levels: level of each stem block.
    stem_block_fn: block type of the stem blocks (one for all, or one per block).

  Returns:
    (source, output) pairs of network indices, in build order.
  """
  specs, stem, node_of = _graph(block_specs, stem_levels, stem_block_fn)
  merges = topology.merge_unconsumed(specs, stem, node_of)
  return [(source, len(stem) + i) for i, absorbed in enumerate(merges) for source in absorbed]


def unused_blocks(
  block_specs: Sequence,
  stem_levels: Sequence[int],
  min_level: int = 3,
  max_level: int = 7,
  stem_block_fn: StemBlockFns = spinenet_specs.BOTTLENECK,
) -> List[int]:
  """Network indices of blocks that no endpoint in [min_level, max_level] needs.

  A block is used if an output block of an endpoint level depends on it, through
  parent connections or zero-out-degree merges (`topology.unused_nodes`). E.g.
  SpineNet-49's last block is the level-2 output, which only a min_level=2 model
  reads.

  Args:
    block_specs: BlockSpecs (or tuples/dicts accepted by `BlockSpec.from_any`).
    stem_levels: level of each stem block.
    min_level: lowest endpoint level.
    max_level: highest endpoint level.
    stem_block_fn: block type of the stem blocks (one for all, or one per block).

  Returns:
    Sorted network indices of the unused blocks.
  """
  specs, stem, node_of = _graph(block_specs, stem_levels, stem_block_fn)
  return topology.unused_nodes(specs, stem, node_of, min_level, max_level)


def edge_kind(parent_level: int, level: int) -> str:
  """'down' (to a coarser level), 'up' (to a finer level) or 'same'."""
  if level > parent_level:
    return 'down'
  if level < parent_level:
    return 'up'
  return 'same'


# Candidate curvatures (matplotlib arc3 `rad`; positive bows to the right of the
# direction of travel, i.e. downward for a left-to-right arrow): an
# arrow takes the one that best clears blocks, labels and the arrows routed before.
_CANDIDATE_RADS = (0.0, 0.12, -0.12, 0.22, -0.22, 0.32, -0.32, 0.45, -0.45)
_CLEARANCE = 0.26  # inches an arrow should keep from a block centre.
_CROWDING = 0.07  # inches under which two arrows count as overlapping.


def _arc_points(start: np.ndarray, end: np.ndarray, rad: float, num: int = 24) -> np.ndarray:
  """Samples the quadratic Bezier that matplotlib's arc3 draws, ends excluded."""
  delta = end - start
  control = (start + end) / 2 + rad * np.array([delta[1], -delta[0]])
  t = np.linspace(0.1, 0.9, num)[:, None]
  return (1 - t) ** 2 * start + 2 * t * (1 - t) * control + t**2 * end


def _min_distances(points: np.ndarray, others: np.ndarray) -> np.ndarray:
  """For each point, the distance to the nearest of `others` (inf if none)."""
  if not len(others):
    return np.full(len(points), np.inf)
  return np.linalg.norm(points[:, None] - others[None], axis=-1).min(axis=1)


def _route_edges(
  edges: Sequence[Tuple[int, int]],
  centers: np.ndarray,
  labels: np.ndarray,
  bounds: Tuple[float, float, float, float],
) -> Dict[Tuple[int, int], float]:
  """Picks a curvature per edge so arrows avoid blocks and each other.

  A greedy search: short edges are routed first (they have little room), each
  taking the candidate curvature with the lowest cost. Cost: passing near a block
  other than its ends or near an output label, overlapping an arrow already
  routed, leaving the axes, and, a little, bending at all.

  Args:
    edges: (source, target) network indices.
    centers: block centres in inches, one row per network index.
    labels: output label positions in inches.
    bounds: (x0, y0, x1, y1) of the axes in inches.

  Returns:
    The curvature of each edge.
  """
  placed = np.zeros((0, 2))
  rads = {}
  for source, target in sorted(edges, key=lambda e: (e[1] - e[0], e)):
    others = np.delete(centers, [source, target], axis=0)
    best = None
    for rad in _CANDIDATE_RADS:
      points = _arc_points(centers[source], centers[target], rad)
      block_gap = np.clip(_CLEARANCE - _min_distances(points, others), 0, None)
      label_gap = np.clip(0.15 - _min_distances(points, labels), 0, None)
      crowded = (_min_distances(points, placed) < _CROWDING).mean()
      outside = (
        (points[:, 0] < bounds[0])
        | (points[:, 1] < bounds[1])
        | (points[:, 0] > bounds[2])
        | (points[:, 1] > bounds[3])
      ).mean()
      cost = 40 * block_gap.max() + 20 * label_gap.max() + 4 * crowded + 10 * outside + abs(rad)
      if best is None or cost < best[0]:
        best = (cost, rad, points)
    rads[(source, target)] = best[1]
    placed = np.concatenate([placed, best[2]])
  return rads


def _block_patch(block_fn: str, transform) -> patches.Patch:
  """A shape centred on (0, 0) in inches, one per block type."""
  face = BLOCK_COLORS.get(block_fn, '#dddddd')
  common = dict(facecolor=face, edgecolor='black', linewidth=1.0, transform=transform, zorder=3)
  if block_fn in (spinenet_specs.RESIDUAL, nasfpn_specs.GLOBAL_ATTENTION):
    return patches.Ellipse(
      (0, 0), 2 * _BLOCK_HALF_HEIGHT + 0.02, 2 * _BLOCK_HALF_HEIGHT + 0.02, **common
    )
  if block_fn == spinenet_specs.MBCONV:
    return patches.RegularPolygon(
      (0, 0), 6, radius=_BLOCK_HALF_HEIGHT + 0.03, orientation=0.5236, **common
    )
  return patches.FancyBboxPatch(
    (-_BLOCK_HALF_WIDTH, -_BLOCK_HALF_HEIGHT),
    2 * _BLOCK_HALF_WIDTH,
    2 * _BLOCK_HALF_HEIGHT,
    boxstyle='round,pad=0,rounding_size=0.03',
    **common,
  )


def _draw_blocks(
  fig: Figure,
  ax,
  levels: Sequence[int],
  block_fns: Sequence[str],
  outputs: Set[int],
  unused: Set[int],
  min_level: int,
  max_level: int,
) -> List[patches.Patch]:
  """Draws one shape per block; returns them so arrows can be clipped to them."""
  drawn = []
  for n, (level, block_fn) in enumerate(zip(levels, block_fns)):
    # Inches around the data point: shapes keep their size at any axis scale.
    transform = fig.dpi_scale_trans + transforms.ScaledTranslation(n, level, ax.transData)
    patch = _block_patch(block_fn, transform)
    is_endpoint = n in outputs and min_level <= level <= max_level
    if n in unused:
      patch.set_alpha(UNUSED_ALPHA)
      patch.set_linestyle('--')
    if n in outputs:
      patch.set_edgecolor(OUTPUT_EDGE_COLOR)
      patch.set_linewidth(3.0 if is_endpoint else 1.5)
    ax.add_artist(patch)
    ax.text(
      n,
      level,
      str(n),
      ha='center',
      va='center',
      fontsize=7,
      zorder=4,
      alpha=UNUSED_ALPHA if n in unused else 1.0,
    )
    if n in outputs:
      ax.annotate(
        f'P{level}',
        (n, level),
        xytext=(0, 13),
        textcoords='offset points',
        ha='center',
        va='bottom',
        fontsize=9,
        fontweight='bold',
        color=OUTPUT_EDGE_COLOR,
        zorder=5,
        alpha=UNUSED_ALPHA if n in unused else 1.0,
      )
    drawn.append(patch)
  return drawn


def _draw_arrow(
  ax,
  start: int,
  end: int,
  levels: Sequence[int],
  drawn: Sequence[patches.Patch],
  rad: float,
  color: str,
  linestyle: str,
  faded: bool,
) -> None:
  ax.add_patch(
    patches.FancyArrowPatch(
      (start, levels[start]),
      (end, levels[end]),
      connectionstyle=f'arc3,rad={rad}',
      arrowstyle='-|>',
      mutation_scale=9,
      color=color,
      linewidth=1.0,
      linestyle=linestyle,
      alpha=UNUSED_ALPHA if faded else 0.85,
      patchA=drawn[start],
      patchB=drawn[end],
      shrinkA=1,
      shrinkB=1,
      zorder=2,
    )
  )


def _draw_edges(
  fig: Figure,
  ax,
  specs: Sequence[BlockSpec],
  levels: Sequence[int],
  num_stem: int,
  merges: Sequence[Tuple[int, int]],
  drawn: Sequence[patches.Patch],
  outputs: Set[int],
  unused: Set[int],
) -> None:
  """Draws the parent connections (solid) and zero-out-degree merges (dashed)."""
  # Route in inches: arc3 bends in display space, where the level rows and the
  # block columns have different scales.
  centers = (
    ax.transData.transform(np.array([(n, level) for n, level in enumerate(levels)], float))
    / fig.dpi
  )
  labels = np.array([centers[n] + (0, 0.25) for n in sorted(outputs)]).reshape(-1, 2)
  bounds = tuple(ax.bbox.extents / fig.dpi)
  parent_edges = [
    (parent, num_stem + i) for i, spec in enumerate(specs) for parent in spec.input_offsets
  ]
  rads = _route_edges(sorted(set(parent_edges)) + list(merges), centers, labels, bounds)
  for parent, n in parent_edges:
    kind = edge_kind(levels[parent], levels[n])
    _draw_arrow(
      ax, parent, n, levels, drawn, rads[(parent, n)], EDGE_COLORS[kind], '-', n in unused
    )
  for source, target in merges:
    _draw_arrow(
      ax, source, target, levels, drawn, rads[(source, target)], MERGE_COLOR, '--', target in unused
    )


def _style_axes(
  ax,
  num_blocks: int,
  num_stem: int,
  levels: Sequence[int],
  title: Optional[str],
  words: Tuple[str, str] = ('stem', 'block order (scale-permuted) \u2192'),
) -> None:
  low, high = min(1, min(levels)), max(7, max(levels))
  ax.set_xlim(-0.7, num_blocks - 0.3)
  ax.set_ylim(low - 0.6, high + 0.75)
  ax.set_yticks(range(low, high + 1))
  ax.set_yticklabels([f'L{l}' for l in range(low, high + 1)])
  ax.set_ylabel('feature level (resolution 1/2^L)')
  ax.set_xticks([])
  ax.set_xlabel(words[1])
  for l in range(low, high + 1):
    ax.axhline(l, color='#eeeeee', linewidth=0.8, zorder=0)
  # Shade the stem so it is clear where the searched blocks start.
  ax.axvspan(-0.5, num_stem - 0.5, color='#f2f2f2', zorder=0)
  ax.text(
    (num_stem - 1) / 2, high + 0.45, words[0], ha='center', va='center', fontsize=9, color='#555555'
  )
  for side in ('top', 'right'):
    ax.spines[side].set_visible(False)
  if title:
    ax.set_title(title)


def _legend_handles(
  show_unused: bool, show_merges: bool, node_types: Sequence[str] = spinenet_specs.BLOCK_TYPES
) -> List[Line2D]:
  markers = {
    spinenet_specs.BOTTLENECK: 's',
    spinenet_specs.RESIDUAL: 'o',
    spinenet_specs.MBCONV: 'h',
    nasfpn_specs.SUM: 's',
    nasfpn_specs.GLOBAL_ATTENTION: 'o',
  }
  handles = [
    Line2D(
      [],
      [],
      linestyle='',
      marker=markers[fn],
      markersize=10,
      markerfacecolor=BLOCK_COLORS[fn],
      markeredgecolor='black',
      label=fn,
    )
    for fn in node_types
  ]
  handles.append(
    Line2D(
      [],
      [],
      linestyle='',
      marker='s',
      markersize=10,
      markerfacecolor='white',
      markeredgecolor=OUTPUT_EDGE_COLOR,
      markeredgewidth=2.5,
      label='output (P_L)',
    )
  )
  if show_unused:
    handles.append(
      Line2D(
        [],
        [],
        linestyle='',
        marker='s',
        markersize=10,
        markerfacecolor='#cccccc',
        markeredgecolor='black',
        alpha=UNUSED_ALPHA,
        label='unused (feeds no endpoint)',
      )
    )
  labels = {'down': 'downsampling', 'up': 'upsampling', 'same': 'same level'}
  handles += [Line2D([], [], color=EDGE_COLORS[k], label=labels[k]) for k in labels]
  if show_merges:
    handles.append(Line2D([], [], color=MERGE_COLOR, linestyle='--', label='zero-out-degree merge'))
  return handles


@dataclasses.dataclass(frozen=True)
class _Network:
  """What the figure shows: specs, one level and node type per node, the rules' output."""

  specs: Sequence
  levels: Sequence[int]
  node_fns: Sequence[str]
  num_inputs: int
  merges: Sequence[Tuple[int, int]]
  unused: Set[int]
  words: Tuple[str, str] = ('stem', 'block order (scale-permuted) \u2192')
  node_types: Sequence[str] = spinenet_specs.BLOCK_TYPES


def _render(
  net: _Network, output_path_prefix: str, title: Optional[str], endpoint_levels: Tuple[int, int]
) -> List[str]:
  """Draws `net` and writes `<prefix>.png` and `<prefix>.svg`; returns the paths."""
  min_level, max_level = endpoint_levels
  specs, levels, num_stem, merges, unused = (
    net.specs,
    net.levels,
    net.num_inputs,
    net.merges,
    net.unused,
  )
  outputs = {num_stem + i for i, s in enumerate(specs) if s.is_output}
  fig = Figure(figsize=(14, 5))
  FigureCanvasAgg(fig)
  ax = fig.add_axes((0.06, 0.16, 0.92, 0.76))
  _style_axes(ax, len(levels), num_stem, levels, title, net.words)
  drawn = _draw_blocks(fig, ax, levels, net.node_fns, outputs, unused, min_level, max_level)
  _draw_edges(fig, ax, specs, levels, num_stem, merges, drawn, outputs, unused)
  handles = _legend_handles(bool(unused), bool(merges), net.node_types)
  fig.legend(
    handles=handles,
    loc='lower center',
    bbox_to_anchor=(0.5, 0.0),
    ncol=len(handles),
    frameon=False,
    fontsize=8.5,
    handlelength=2.2,
    columnspacing=1.2,
  )

  paths = [f'{output_path_prefix}.png', f'{output_path_prefix}.svg']
  # A fixed hash salt and no date keep the SVG byte-identical across runs, so a
  # regenerated docs/ figure only shows up in a diff when the drawing changed.
  with matplotlib.rc_context({'svg.hashsalt': 'official_spinenet'}):
    with files.atomic_output(paths[0]) as tmp:
      fig.savefig(tmp, format='png', dpi=150)
    with files.atomic_output(paths[1]) as tmp:
      fig.savefig(tmp, format='svg', metadata={'Date': None})
  return paths


def draw_architecture(
  block_specs: Sequence,
  stem_levels: Sequence[int],
  stem_block_fn: StemBlockFns,
  output_path_prefix: str,
  title: Optional[str] = None,
  min_level: int = 3,
  max_level: int = 7,
) -> List[str]:
  """Draws a scale-permuted network and writes `<prefix>.png` and `<prefix>.svg`.

  Args:
    block_specs: BlockSpecs (or tuples/dicts accepted by `BlockSpec.from_any`);
      parents index into `stem blocks + earlier blocks`.
    stem_levels: level of each stem block, e.g. (2, 2) for SpineNet, (1, 2) for
      SpineNet-Mobile.
    stem_block_fn: block type of the stem blocks (one for all, or one per block).
    output_path_prefix: path without extension (local or gs://); missing
      directories are created.
    title: optional figure title.
    min_level: lowest endpoint level; outputs below it are drawn as unused.
    max_level: highest endpoint level.

  Returns:
    The written paths: [png, svg].
  """
  specs = _as_specs(block_specs)
  num_stem = len(stem_levels)
  levels = block_levels(specs, stem_levels)
  block_fns = _stem_block_fns(stem_block_fn, num_stem) + [s.block_fn for s in specs]
  merges = zero_out_degree_merges(specs, stem_levels, stem_block_fn)
  unused = set(unused_blocks(specs, stem_levels, min_level, max_level, stem_block_fn))
  return _render(
    _Network(specs, levels, block_fns, num_stem, merges, unused),
    output_path_prefix,
    title,
    (min_level, max_level),
  )


# Families `draw_published` draws: the scale-permuted ones and NAS-FPN's cells.
FAMILIES = tuple(sorted(ARCHITECTURES)) + ('nasfpn',)


def draw_published(
  family: str,
  output_path_prefix: str,
  block_specs_json: Optional[str] = None,
  title: Optional[str] = None,
  min_level: int = 3,
  max_level: int = 7,
  stem_levels: Optional[Sequence[int]] = None,
) -> List[str]:
  """Draws a family's published architecture, or specs from a file on its stem.

  Args:
    family: one of FAMILIES: a key of ARCHITECTURES ('spinenet', 'spinenet_mobile'):
      the stem, and the block specs unless block_specs_json is given; or 'nasfpn':
      the paper's merging cells unless block_specs_json gives cell specs.
    output_path_prefix: writes `<prefix>.png` and `<prefix>.svg`.
    block_specs_json: optional file written by `spinenet_specs.save_block_specs`
      (`nasfpn_specs.save_cell_specs` for 'nasfpn').
    title: figure title; default: the model name, or the JSON file's name.
    min_level: lowest endpoint level.
    max_level: highest endpoint level.
    stem_levels: the stem's levels instead of the family's, e.g. (2, 2, 3, 3)
      for a scale-permuted ResNet (R35-SP18's stem); not for 'nasfpn'.

  Returns:
    The written paths: [png, svg].
  """
  if family not in FAMILIES:
    raise ValueError(f'Unknown architecture family {family!r}; choose one of {list(FAMILIES)}.')
  default_title = 'NAS-FPN' if family == 'nasfpn' else ARCHITECTURES[family].title
  if block_specs_json:
    default_title = os.path.splitext(os.path.basename(block_specs_json))[0]
  title = default_title if title is None else title
  if family == 'nasfpn':
    if stem_levels:
      raise ValueError('NAS-FPN has no stem: its inputs are the pyramid levels.')
    cells = nasfpn_specs.NASFPN_CELL_SPECS
    if block_specs_json:
      cells = nasfpn_specs.load_cell_specs(block_specs_json)
    return draw_cells(cells, output_path_prefix, title, min_level, max_level)
  preset = ARCHITECTURES[family]
  specs = preset.block_specs
  if block_specs_json:
    specs = spinenet_specs.load_block_specs(block_specs_json)
  return draw_architecture(
    specs,
    tuple(stem_levels) if stem_levels else preset.stem_levels,
    preset.stem_block_fn,
    output_path_prefix,
    title=title,
    min_level=min_level,
    max_level=max_level,
  )


def draw_cells(
  cell_specs: Sequence,
  output_path_prefix: str,
  title: Optional[str] = None,
  min_level: int = 3,
  max_level: int = 7,
) -> List[str]:
  """Draws a NAS-FPN pyramid network (Fig. 6 of the paper, unrolled) as PNG and SVG.

  The input pyramid P<min_level>..P<max_level> comes first (shaded), then the
  merging cells in build order at their output level, shaped by binary op; the
  dashed arrows are the unconsumed nodes an output cell absorbs (NAS-FPN Sec. 3.1,
  `topology.merge_unconsumed`, the rule `decoders/nasfpn.py` builds with).

  Args:
    cell_specs: CellSpecs (or tuples/dicts accepted by `CellSpec.from_any`).
    output_path_prefix: writes `<prefix>.png` and `<prefix>.svg`.
    title: optional figure title.
    min_level: the pyramid's lowest level.
    max_level: its highest level.

  Returns:
    The written paths: [png, svg].
  """
  specs = [nasfpn_specs.CellSpec.from_any(s) for s in cell_specs]
  inputs = [topology.Node(level) for level in range(min_level, max_level + 1)]
  num_inputs = len(inputs)
  merges = [
    (source, num_inputs + i)
    for i, absorbed in enumerate(topology.merge_unconsumed(specs, inputs))
    for source in absorbed
  ]
  unused = set(
    topology.unused_nodes(specs, inputs, lambda s: topology.Node(s.level), min_level, max_level)
  )
  net = _Network(
    specs,
    [node.level for node in inputs] + [s.level for s in specs],
    ['input'] * num_inputs + [s.binary_op for s in specs],
    num_inputs,
    merges,
    unused,
    ('input pyramid', 'merging cells in build order \u2192'),
    nasfpn_specs.BINARY_OPS,
  )
  return _render(net, output_path_prefix, title, (min_level, max_level))


# Stems of the searchable families when the search point does not set one.
_DEFAULT_STEMS = {
  'spinenet': ARCHITECTURES['spinenet'],
  'spinenet_mobile': ARCHITECTURES['spinenet_mobile'],
}


def draw_searched(
  specs: Sequence,
  builder: str,
  output_path_prefix: str,
  title: Optional[str] = None,
  builder_overrides: Optional[Dict] = None,
) -> List[str]:
  """Draws an architecture the search found, on the stem of its builder.

  Args:
    specs: block specs ('spinenet', 'spinenet_mobile') or cell specs ('nasfpn').
    builder: the gin builder the specs go to.
    output_path_prefix: writes `<prefix>.png` and `<prefix>.svg`.
    title: figure title.
    builder_overrides: the search point's other builder arguments; a
      'stem_block_levels' entry gives the stem's levels (R-SP stems are bottlenecks).

  Returns:
    The written paths: [png, svg].
  """
  if builder == 'nasfpn':
    return draw_cells(specs, output_path_prefix, title)
  if builder not in _DEFAULT_STEMS:
    raise ValueError(
      f'Cannot draw {builder!r} architectures; choose one of '
      + f'{sorted(_DEFAULT_STEMS) + ["nasfpn"]}.'
    )
  preset = _DEFAULT_STEMS[builder]
  stem_levels = (builder_overrides or {}).get('stem_block_levels') or preset.stem_levels
  return draw_architecture(
    specs, tuple(stem_levels), preset.stem_block_fn, output_path_prefix, title
  )
