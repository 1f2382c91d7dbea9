"""Pictures for the HTML report, rendered with matplotlib's Agg canvas into PNG data URIs.

The HTML report is one self-contained file that must open offline and fetch nothing, so
every picture is embedded as ``data:image/png;base64,...``.  Figures are built on
``matplotlib.figure.Figure`` with an explicit Agg canvas rather than pyplot: no global state,
no GUI backend, safe in a worker thread.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imsave

from robench.leaderboard import THREAT_ORDER

#: longest label drawn inside a figure; the HTML table always has the full name
MAX_LABEL = 42


def mpl_text(value: object, *, limit: int = MAX_LABEL) -> str:
    """Untrusted text safe for matplotlib: no mathtext, never hidden from the legend.

    A ``$`` pair would be parsed as TeX (and a malformed one raises while drawing); a label
    starting with ``_`` is silently left out of legends.
    """
    text = " ".join(str(value).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    text = text.replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_uri(fig: Figure, *, dpi: int) -> str:
    """Render a figure to a PNG data URI."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return png_data_uri(buffer.getvalue())


def image_uri(image: np.ndarray) -> str:
    """One uint8 image ``(H, W, C)`` (C = 1, 3 or 4) as a PNG data URI, pixel for pixel."""
    image = np.asarray(image)
    buffer = io.BytesIO()
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        imsave(buffer, image, format="png", cmap="gray", vmin=0, vmax=255)
    else:
        imsave(buffer, image, format="png")
    return png_data_uri(buffer.getvalue())


def _colors(count: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]


def curves_figure(curves: pd.DataFrame, clean: pd.DataFrame, labels: dict[tuple, str], *,
                  dpi: int) -> str | None:
    """Robust accuracy vs eps, one panel per threat, one line per leaderboard row.

    ``curves`` is :func:`robench.leaderboard.robust_curves`; ``clean`` has the group keys and
    ``clean_acc`` (the curve's value at eps 0); ``labels`` maps a group key to its legend
    text.  Target domains are dashed so a model's two lines pair up by colour.
    """
    if curves.empty:
        return None
    present = list(dict.fromkeys(curves["threat"]))
    threats = [t for t in THREAT_ORDER if t in present] + [t for t in present
                                                          if t not in THREAT_ORDER]
    keys = list(labels)
    models = list(dict.fromkeys((k[0], k[1]) for k in keys))
    colors = dict(zip(models, _colors(len(models)), strict=True))
    clean_of = {k: c for k, c in zip(zip(clean["run"], clean["model"], clean["dataset"],
                                         clean["domain"], strict=True),
                                     clean["clean_acc"], strict=True)}
    columns = min(len(threats), 3)
    rows = (len(threats) + columns - 1) // columns
    fig = Figure(figsize=(4.6 * columns, 3.4 * rows))
    for index, threat in enumerate(threats):
        ax = fig.add_subplot(rows, columns, index + 1)
        part = curves[curves["threat"] == threat]
        ticks = part[["eps", "eps_label"]].drop_duplicates("eps").sort_values("eps")
        for key in keys:
            line = part[(part["run"] == key[0]) & (part["model"] == key[1])
                        & (part["dataset"] == key[2]) & (part["domain"] == key[3])]
            if line.empty:
                continue
            line = line.sort_values("eps")
            xs = [0.0, *line["eps"]]
            ys = [clean_of.get(key, np.nan), *line["robust_acc"]]
            ax.plot(xs, [100 * y for y in ys], marker="o", markersize=3,
                    color=colors[(key[0], key[1])],
                    linestyle="--" if key[3] == "target" else "-", label=labels[key])
        ax.set_xticks([0.0, *ticks["eps"]], ["0", *(mpl_text(t, limit=10)
                                                    for t in ticks["eps_label"])],
                      rotation=45 if len(ticks) > 4 else 0, fontsize=8)
        ax.set_ylim(-2, 102)
        ax.set_title(f"{mpl_text(threat)} threat", fontsize=10)
        ax.set_xlabel("eps", fontsize=9)
        ax.set_ylabel("robust accuracy (%)", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    seen: dict[str, object] = {}
    for ax in fig.axes:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(name, handle)
    # outside the panels, to the right: savefig's tight bbox grows to include it
    fig.legend(list(seen.values()), list(seen), loc="upper left", bbox_to_anchor=(1.0, 1.0),
               fontsize=7, frameon=False)
    return figure_uri(fig, dpi=dpi)


def heatmap_figure(matrix: pd.DataFrame, row_labels: Sequence[str],
                   column_labels: Sequence[str], *, dpi: int) -> str | None:
    """A models x attacks grid of robust accuracy (%), annotated, 0 dark to 100 bright."""
    if matrix.size == 0:
        return None
    values = matrix.to_numpy(dtype=float) * 100
    height, width = values.shape
    fig = Figure(figsize=(min(2.2 + 1.0 * width, 16), min(1.2 + 0.38 * height, 30)))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=100,
                      aspect="auto")
    ax.set_xticks(range(width), [mpl_text(c, limit=24) for c in column_labels], fontsize=8,
                  rotation=30, ha="right")
    ax.set_yticks(range(height), [mpl_text(r) for r in row_labels], fontsize=8)
    for i in range(height):
        for j in range(width):
            value = values[i, j]
            text = "–" if not np.isfinite(value) else f"{value:.0f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="black" if np.isfinite(value) and value > 60 else "white")
    fig.colorbar(image, ax=ax, label="robust accuracy (%)", fraction=0.04)
    return figure_uri(fig, dpi=dpi)


def domain_bars_figure(pairs: pd.DataFrame, *, headline: str, dpi: int) -> str | None:
    """Source vs target accuracy (clean and headline robust) per model, horizontal bars.

    ``pairs`` has one row per model with ``label``, ``source_clean``, ``target_clean``,
    ``source_robust``, ``target_robust``.
    """
    if pairs.empty:
        return None
    series = [("source_clean", "source, clean", "#4c72b0", None),
              ("target_clean", "target, clean", "#dd8452", None),
              ("source_robust", f"source, {headline}", "#4c72b0", "//"),
              ("target_robust", f"target, {headline}", "#dd8452", "//")]
    count = len(pairs)
    fig = Figure(figsize=(8, 1.0 + 0.75 * count))
    ax = fig.add_subplot(1, 1, 1)
    height = 0.2
    positions = np.arange(count)
    for offset, (column, name, color, hatch) in enumerate(series):
        values = pairs[column].to_numpy(dtype=float) * 100
        ax.barh(positions + (offset - 1.5) * height, np.nan_to_num(values), height=height,
                color=color, hatch=hatch, edgecolor="white", label=mpl_text(name, limit=60))
    ax.set_yticks(positions, [mpl_text(v) for v in pairs["label"]], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("accuracy (%)", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2,
              frameon=False)
    return figure_uri(fig, dpi=dpi)
