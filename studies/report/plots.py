"""Figures in the manner of rliable's `plot_utils`: functions take `ax=None` and return the
axes; a colour-blind palette (Okabe & Ito); top and right spines off; intervals drawn.

`save_figure` writes a figure under its stable id as PNG and SVG, byte-stable when
regenerated from the same numbers, with a CSV of exactly the plotted numbers beside them.
"""

from __future__ import annotations

import math
import pathlib

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

# Okabe & Ito's colour-blind-safe palette.
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
#: One colour per arm across all figures, so that "batch" is the same blue everywhere, and
#: no two arms alike: Okabe & Ito's eight, then colours of Paul Tol's colour-blind-safe
#: "muted" scheme for the arms beyond eight.
COLORS = {
    "none": "#000000",
    "batch": "#0072B2",
    "keras_batch": "#56B4E9",
    "layer": "#E69F00",
    "keras_layer": "#F0E442",
    "group": "#009E73",
    "rms": "#CC79A7",
    "batch_renorm": "#D55E00",
    "ghost": "#882255",
    "frn": "#44AA99",
    "dyt": "#DDCC77",
}


def color(name, index=0):
    """The arm's colour, or the palette's `index`-th colour for other names."""
    return COLORS.get(name, OKABE_ITO[index % len(OKABE_ITO)])


def new_axes(width=4.8, height=3.2, ncols=1):
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    for ax in axes.ravel():
        style(ax)
    return fig, (axes[0, 0] if ncols == 1 else list(axes.ravel()))


def style(ax):
    """Top and right spines off, light grid below the data."""
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.grid(True, alpha=0.25, linewidth=0.6)
    ax.set_axisbelow(True)
    return ax


def interval_line(x, mean, low, high, label, ax=None, color_name=None, index=0, marker="o", **kwargs):
    """A mean line with its interval as a band (or error bars when only one x)."""
    if ax is None:
        _, ax = new_axes()
    c = color(color_name or label, index)
    ax.plot(x, mean, marker=marker, markersize=3.5, color=c, label=label, linewidth=1.4, **kwargs)
    ax.fill_between(x, low, high, color=c, alpha=0.2, linewidth=0)
    return ax


def interval_bars(labels, mean, low, high, ax=None, colors=None):
    """Point estimates with interval whiskers, one per label (categorical x)."""
    if ax is None:
        _, ax = new_axes()
    positions = range(len(labels))
    for i, (lab, m, lo, hi) in enumerate(zip(labels, mean, low, high)):
        c = colors[i] if colors else color(lab, i)
        ax.errorbar([i], [m], yerr=[[m - lo], [hi - m]], fmt="o", color=c, capsize=3, markersize=5)
    ax.set_xticks(list(positions))
    ax.set_xticklabels(labels, rotation=20, ha="right")
    return ax


def save_figure(fig, fig_id, out_dir, data, caption=None):
    """Writes `<fig_id>.png`, `<fig_id>.svg` and `<fig_id>.csv` (the plotted numbers,
    `data` a DataFrame) under `out_dir`; returns the three paths. Metadata that would
    change between runs (dates, software versions, random SVG ids) is left out."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if caption:
        fig.text(0.01, 0.005, caption, fontsize=7, color="#444444", ha="left", va="bottom", wrap=True)
    paths = [out / f"{fig_id}.png", out / f"{fig_id}.svg", out / f"{fig_id}.csv"]
    with matplotlib.rc_context({"svg.hashsalt": fig_id, "svg.fonttype": "path"}):
        fig.savefig(paths[0], dpi=150, bbox_inches="tight", metadata={"Software": None})
        fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    data.to_csv(paths[2], index=False, float_format="%.6g", lineterminator="\n")
    return paths


#: One colour per verdict in the summary figure.
VERDICT_COLORS = {
    "supported": "#009E73",
    "partly supported": "#56B4E9",
    "inconclusive": "#E69F00",
    "not supported": "#D55E00",
}


#: The summary figure's marker per task of a claim.
TASK_MARKERS = {"synthetic": "D", "real data": "o"}


def _clip(value, limit):
    return value if limit is None or math.isnan(value) else max(-limit, min(limit, value))


def forest(labels, mean, low, high, verdicts, marks, notes=None, ax=None, markers=None, limit=None):
    """A forest plot: one row per label, top to bottom, the point and its interval
    coloured by the row's verdict (`VERDICT_COLORS`), a vertical line at 0 (no effect),
    a short tick at each x of the row's `marks` (its thresholds) and, right of the axes,
    the row's `notes` (e.g. the raw numbers). Rows with a NaN mean stay empty.

    `markers`: the point's marker per row (`TASK_MARKERS`; default a diamond). `limit`:
    the axis runs from -limit to limit; a point or an interval's end beyond it is drawn at
    the edge as an arrow pointing out, with its value printed beside it, so that every
    interval stays visible."""
    if ax is None:
        _, ax = new_axes(width=6.4, height=0.5 * len(labels) + 1.2)
    positions = list(range(len(labels)))[::-1]
    ax.axvline(0.0, color="#777777", linewidth=0.8)
    notes = notes or [""] * len(labels)
    markers = markers or ["D"] * len(labels)
    for y, m, lo, hi, v, xs, note, marker in zip(positions, mean, low, high, verdicts, marks, notes, markers):
        c = VERDICT_COLORS.get(v, "#777777")
        for x in xs:
            ax.plot([_clip(x, limit)] * 2, [y - 0.3, y + 0.3], color="#444444", linewidth=1.2)
        if lo == lo and hi == hi:  # a NaN bound compares unequal to itself: no interval
            ax.plot([_clip(lo, limit), _clip(hi, limit)], [y, y], color=c, linewidth=2.2, solid_capstyle="butt")
            for end, value in (("low", lo), ("high", hi)):
                if _clip(value, limit) != value:
                    edge = _clip(value, limit)
                    ax.plot([edge], [y], marker=">" if value > 0 else "<", color=c, markersize=6)
                    ax.text(edge, y + 0.22, f"{value:.3g}", fontsize=6, color=c,
                            ha="right" if value > 0 else "left", va="bottom")
        if m == m:
            shown = _clip(m, limit)
            ax.plot([shown], [y], marker=marker, color=c, markersize=5,
                    markerfacecolor=c if shown == m else "white")
        ax.text(1.02, y, note, transform=ax.get_yaxis_transform(), fontsize=7, va="center", ha="left")
    ax.set_yticks(positions)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_ylim(-0.7, len(labels) - 0.3)
    handles = [plt.Line2D([], [], color=c, linewidth=2.2, label=v) for v, c in VERDICT_COLORS.items()]
    handles += [plt.Line2D([], [], color="#444444", marker=mk, linestyle="none", label=f"{task} task")
                for task, mk in TASK_MARKERS.items() if mk in markers]
    ax.legend(handles=handles, frameon=False, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18),
              ncol=3)
    return ax
