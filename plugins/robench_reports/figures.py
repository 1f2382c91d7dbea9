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


_DOMAIN_ORDER = {"source": 0, "target": 1}


def curves_figure(curves: pd.DataFrame, clean: pd.DataFrame, labels: dict[tuple, str], *,
                  dpi: int, near_chance: set[tuple] | None = None) -> str | None:
    """Robust accuracy vs eps: one panel per threat (rows) and test domain (columns).

    ``curves`` is :func:`robench.leaderboard.robust_curves`; ``clean`` has the group keys and
    ``clean_acc`` (the curve's value at eps 0); ``labels`` maps a group key ``(run, model,
    dataset, domain)`` to the legend text of its model (the same text for both domains: one
    colour per model, the same in every panel).  Keys in ``near_chance`` are drawn thin and
    dotted: their robust accuracy means nothing.
    """
    if curves.empty:
        return None
    near_chance = near_chance or set()
    present = list(dict.fromkeys(curves["threat"]))
    threats = [t for t in THREAT_ORDER if t in present] + [t for t in present
                                                          if t not in THREAT_ORDER]
    keys = list(labels)
    domains = sorted({(k[3], k[2]) for k in keys},
                     key=lambda d: (_DOMAIN_ORDER.get(d[0], 2), d[0], d[1]))
    models = list(dict.fromkeys(labels[k] for k in keys))
    colors = dict(zip(models, _colors(len(models)), strict=True))
    markers = "osD^vP*Xh<>"
    marker_of = {m: markers[i // 10 % len(markers)] for i, m in enumerate(models)}
    clean_of = {k: c for k, c in zip(zip(clean["run"], clean["model"], clean["dataset"],
                                         clean["domain"], strict=True),
                                     clean["clean_acc"], strict=True)}
    rows, columns = len(threats), max(1, len(domains))
    fig = Figure(figsize=(min(6.4 * columns, 14.0), 3.9 * rows + 0.35 * (len(models) // 3 + 1)))
    axes = []
    for row, threat in enumerate(threats):
        part = curves[curves["threat"] == threat]
        ticks = part[["eps", "eps_label"]].drop_duplicates("eps").sort_values("eps")
        for column, (domain, dataset) in enumerate(domains):
            ax = fig.add_subplot(rows, columns, row * columns + column + 1)
            axes.append(ax)
            for key in keys:
                if (key[3], key[2]) != (domain, dataset):
                    continue
                line = part[(part["run"] == key[0]) & (part["model"] == key[1])
                            & (part["dataset"] == key[2]) & (part["domain"] == key[3])]
                if line.empty:
                    continue
                line = line.sort_values("eps")
                xs = [0.0, *line["eps"]]
                ys = [clean_of.get(key, np.nan), *line["robust_acc"]]
                weak = key in near_chance
                ax.plot(xs, [100 * y for y in ys], marker=marker_of[labels[key]],
                        markersize=3.5, linewidth=0.9 if weak else 1.8,
                        linestyle=":" if weak else "-", color=colors[labels[key]],
                        label=labels[key])
            ax.set_xticks([0.0, *ticks["eps"]], ["0", *(mpl_text(t, limit=10)
                                                        for t in ticks["eps_label"])],
                          rotation=45 if len(ticks) > 5 else 0, fontsize=9)
            ax.set_ylim(-2, 102)
            ax.set_title(f"{mpl_text(threat)} · {mpl_text(domain)} domain "
                         f"({mpl_text(dataset, limit=24)})", fontsize=11)
            ax.set_xlabel(f"eps ({mpl_text(threat)})", fontsize=9)
            if column == 0:
                ax.set_ylabel("robust accuracy (%)", fontsize=9)
            ax.tick_params(axis="y", labelsize=9)
            ax.grid(alpha=0.3)
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(name, handle)
    fig.tight_layout(rect=(0, 0, 1, 0.93 if len(seen) <= 4 else 0.9))
    # one legend for all panels, above them: savefig's tight bbox grows to include it
    fig.legend(list(seen.values()), list(seen), loc="lower center",
               bbox_to_anchor=(0.5, 0.93 if len(seen) <= 4 else 0.9),
               ncol=min(4, max(1, len(seen))), fontsize=9, frameon=False)
    return figure_uri(fig, dpi=dpi)


def _two_lines(label: str, limit: int) -> str:
    """A heatmap column label on at most two lines (attack, then threat@eps) without cuts."""
    if " (" in label:
        first, second = label.split(" (", 1)
        return f"{mpl_text(first, limit=limit)}\n({mpl_text(second, limit=limit)}"
    return mpl_text(label, limit=limit)


def heatmap_figure(matrix: pd.DataFrame, row_labels: Sequence[str],
                   column_labels: Sequence[str], *, dpi: int,
                   scale_columns: Sequence[bool] | None = None) -> str | None:
    """A models x attacks grid of robust accuracy (%), annotated, low dark to high bright.

    The colour range is that of the columns ``scale_columns`` marks (default: all), so a
    baseline near the clean accuracy (random noise) does not stretch it and leave every
    attack the same dark colour; cells outside it take the end colour, and every cell is
    annotated with its number.  Column labels ``attack (threat@eps)`` go on two lines and
    the figure widens with the longest of them, so attack names are not cut (up to
    :data:`MAX_LABEL` characters)."""
    if matrix.size == 0:
        return None
    values = matrix.to_numpy(dtype=float) * 100
    height, width = values.shape
    low, high = heatmap_range(values, scale_columns)
    shown = [_two_lines(c, MAX_LABEL) for c in column_labels]
    longest = max((len(line) for c in shown for line in c.split("\n")), default=8)
    cell = max(1.0, 0.075 * longest)  # inches per column: the label fits horizontally
    rotate = width * cell > 14
    if rotate:
        cell = 0.8
    fig = Figure(figsize=(min(3.2 + cell * width, 18), min(1.6 + 0.4 * height, 30)))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=low, vmax=high,
                      aspect="auto")
    ax.set_xticks(range(width), shown, fontsize=8, rotation=35 if rotate else 0,
                  ha="right" if rotate else "center")
    ax.xaxis.tick_top()
    ax.set_yticks(range(height), [mpl_text(r) for r in row_labels], fontsize=8)
    for i in range(height):
        for j in range(width):
            value = values[i, j]
            text = "–" if not np.isfinite(value) else f"{value:.0f}"
            bright = np.isfinite(value) and (value - low) > 0.6 * (high - low)
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="black" if bright else "white")
    extend = "neither"
    finite = values[np.isfinite(values)]
    if finite.size:
        extend = {(False, False): "neither", (True, False): "min", (False, True): "max",
                  (True, True): "both"}[(bool((finite < low).any()),
                                         bool((finite > high).any()))]
    fig.colorbar(image, ax=ax, label="robust accuracy (%)", fraction=0.04, extend=extend)
    return figure_uri(fig, dpi=dpi)


def heatmap_range(values: np.ndarray, scale_columns: Sequence[bool] | None = None
                  ) -> tuple[float, float]:
    """The colour range (percent) of a heatmap: the smallest and largest finite value of the
    columns ``scale_columns`` marks (all when None or none is marked or finite), widened
    to at least 10 points so that near-equal values do not look far apart; 0-100 when no
    value is finite."""
    values = np.asarray(values, dtype=float)
    chosen = values
    if scale_columns is not None and any(scale_columns):
        marked = values[:, np.asarray(scale_columns, dtype=bool)]
        if np.isfinite(marked).any():
            chosen = marked
    finite = chosen[np.isfinite(chosen)]
    if finite.size == 0:
        return 0.0, 100.0
    low, high = float(finite.min()), float(finite.max())
    if high - low < 10:
        middle = (low + high) / 2
        low, high = max(0.0, middle - 5), min(100.0, middle + 5)
        if high - low < 10:
            low, high = (0.0, 10.0) if low <= 0 else (90.0, 100.0)
    return low, high


def domain_bars_figure(pairs: pd.DataFrame, *, headline: str, dpi: int) -> str | None:
    """Source vs target accuracy (clean and headline robust) per model, horizontal bars.

    ``pairs`` has one row per model with ``label``, ``source_clean``, ``target_clean``,
    ``source_robust``, ``target_robust``.  Every bar is labelled with its value, and a bar
    at 0% gets a visible tick at the axis, so "0" is never mistaken for "missing".
    """
    if pairs.empty:
        return None
    series = [("source_clean", "source, clean", "#4c72b0", None),
              ("source_robust", f"source, {headline}", "#9bb6e0", "//"),
              ("target_clean", "target, clean", "#dd8452", None),
              ("target_robust", f"target, {headline}", "#f2c29e", "//")]
    count = len(pairs)
    fig = Figure(figsize=(10, 1.2 + 1.0 * count))
    ax = fig.add_subplot(1, 1, 1)
    height = 0.2
    positions = np.arange(count)
    for offset, (column, name, color, hatch) in enumerate(series):
        values = pairs[column].to_numpy(dtype=float) * 100
        ys = positions + (offset - 1.5) * height
        ax.barh(ys, np.nan_to_num(values), height=height, color=color, hatch=hatch,
                edgecolor="#555555", linewidth=0.4, label=mpl_text(name, limit=60))
        for y, value in zip(ys, values, strict=True):
            if not np.isfinite(value):
                ax.text(0.8, y, "n/a", va="center", fontsize=7, color="#555555")
                continue
            end = value
            if value < 1.0:  # a (nearly) zero-width bar: a stub with a border shows it
                ax.barh([y], [1.2], height=height * 0.8, color=color, edgecolor="#222222",
                        linewidth=0.8)
                end = 1.2
            ax.text(end + 0.8, y, f"{value:.0f}%", va="center", fontsize=7)
    ax.set_yticks(positions, [mpl_text(v) for v in pairs["label"]], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 108)
    ax.set_xticks(range(0, 101, 20))
    ax.set_xlabel("accuracy (%)", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2,
              frameon=False)
    return figure_uri(fig, dpi=dpi)


def diverging_rgb(values: np.ndarray) -> np.ndarray:
    """Values in [-1, 1] as uint8 RGB on a diverging map: blue < 0, white 0, red > 0."""
    from matplotlib import colormaps

    cmap = colormaps["RdBu_r"]
    rgba = cmap((np.clip(values, -1.0, 1.0) + 1.0) / 2.0)
    return np.rint(rgba[..., :3] * 255).astype(np.uint8)


def diverging_css_gradient(steps: int = 9) -> str:
    """The same map as a CSS ``linear-gradient`` (for the colour key next to the strips)."""
    stops = diverging_rgb(np.linspace(-1.0, 1.0, steps))
    return "linear-gradient(to right, " + ", ".join(
        f"rgb({r}, {g}, {b})" for r, g, b in stops) + ")"
