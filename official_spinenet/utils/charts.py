"""The tools' charts: matplotlib figures without pyplot (no global state, no display),
labelled alike and written atomically as PNG."""

from typing import Optional

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from official_spinenet.utils import files


def figure(width: float, height: float, dpi: int = 110) -> Figure:
  """A figure of width x height inches with its own Agg canvas."""
  fig = Figure(figsize=(width, height), dpi=dpi)
  FigureCanvasAgg(fig)
  return fig


def label(ax: Axes, xlabel: str, ylabel: str, title: str, legend: Optional[str] = None) -> None:
  """Axis labels, a small title, a light grid and, if `legend` names a place, the legend."""
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=10)
  ax.grid(True, alpha=0.3)
  if legend:
    ax.legend(loc=legend)


def save_png(fig: Figure, path: str) -> None:
  """Lays the figure out and writes it to `path` as PNG, atomically."""
  fig.tight_layout()
  with files.atomic_output(path) as tmp:
    fig.savefig(tmp, format='png')
