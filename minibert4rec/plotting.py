"""Every figure of the project, drawn by four small helpers.

The main one is ``show_heatmaps``, the d2l.ai helper grown a little: it draws
a GRID of matrices, one panel per (row, column) of the input array, e.g.

    attention averaged over test users    (L, H, Tq, Tk)  ->  L x H panels
    one layer's heads                     (H, Tq, Tk)     ->  1 x H panels
    a single matrix                       (Tq, Tk)        ->  one panel

Every panel uses the SAME colour scale (one colour bar for the whole grid;
without it, two panels of the same colour could mean different weights).
Grids of DIFFERENT models go side by side with ``show_heatmap_groups``: one
colour scale and colour bar per model, so a model whose weights are all
small is not drawn blank on another model's scale.
Axis labels and tick labels appear only on the outer edge: "key" under the
bottom row, "query" left of the first column. In a panel, row i is query i
and column j is key j, the layout of ``model.attention``.

The grid size is read from the array's shape, never hard-coded: a 4-layer,
8-head model gets a 4 x 8 grid with the same call.

Attention masks have one colour convention everywhere (``show_masks``):
DARK = MASKED (the key gets -10000 before the softmax), WHITE = ALLOWED,
stated on the colour bar.

The other helpers: ``plot_training_curve`` (loss and validation metrics
against wall-clock minutes), ``plot_lines`` (any family of curves sharing an
x axis, e.g. GELU vs ReLU, throughput vs batch size) and
``plot_positional_encodings`` (a positions x dimensions table).

Every helper returns the matplotlib Figure and leaves it open (a notebook
shows it, a script may add to it); with ``path`` it also saves a PNG at
150 dpi, creating the parent folders. A script that only wants the file
should call ``matplotlib.pyplot.close(fig)`` afterwards.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

DPI = 150


def _pyplot():
    """matplotlib.pyplot, imported on first use (importing the package stays cheap)."""
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path):
    """Write ``fig`` as a PNG at ``DPI`` dpi, creating parent folders. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


# ----------------------------------------------------------------------------
# Heat-maps
# ----------------------------------------------------------------------------


def as_grid(matrices):
    """Bring 2-D (Tq, Tk), 3-D (cols, Tq, Tk) or 4-D (rows, cols, Tq, Tk) to 4-D.

    A 2-D input becomes (1, 1, Tq, Tk), a 3-D one (1, cols, Tq, Tk).
    """
    m = np.asarray(matrices, dtype=float)
    if m.ndim < 2 or m.ndim > 4:
        raise ValueError(f"show_heatmaps needs 2-D, 3-D or 4-D input, got shape {m.shape}")
    return m.reshape((1,) * (4 - m.ndim) + m.shape)


def _split_tick_labels(tick_labels, Tq, Tk):
    """tick_labels -> (query labels or None, key labels or None).

    Accepts one list (used for both axes; needs Tq == Tk) or a pair
    (query_labels, key_labels).
    """
    if tick_labels is None:
        return None, None
    is_pair = (len(tick_labels) == 2 and all(not isinstance(t, str) and hasattr(t, "__len__")
                                             for t in tick_labels))
    q_labels, k_labels = tick_labels if is_pair else (tick_labels, tick_labels)
    if len(q_labels) != Tq or len(k_labels) != Tk:
        raise ValueError(f"tick labels ({len(q_labels)} queries, {len(k_labels)} keys) "
                         f"do not match the matrices ({Tq} queries, {Tk} keys)")
    return [str(t) for t in q_labels], [str(t) for t in k_labels]


def show_heatmaps(matrices, row_titles=None, col_titles=None, xlabel="key", ylabel="query",
                  tick_labels=None, cmap="Reds", vmin=None, vmax=None, title=None, path=None,
                  figsize=None, fig=None, cbar_label=None, cbar_ticks=None):
    """Draw a grid of heat-maps with one shared colour bar.

    matrices: (rows, cols, Tq, Tk), or (cols, Tq, Tk), or (Tq, Tk)
        panel (r, c) shows matrices[r, c]: row i = query i, column j = key j.
    row_titles: ``rows`` strings (e.g. "layer 1"), written left of each row.
    col_titles: ``cols`` strings (e.g. "head 1"), written above each column.
    xlabel, ylabel: axis names, shown only on the outer edge of the grid.
    tick_labels: None, one list of Tq == Tk labels (e.g. ["0", ..., "8",
        "[MASK]"]) for both axes, or a pair (query_labels, key_labels).
    vmin, vmax: the colour scale of EVERY panel; default the min and max over
        all panels, so equal colours mean equal values across the grid.
    title: a title above the whole grid.  path: save a PNG there if given.
    figsize: (width, height) in inches; default grows with the grid.
    fig: draw into this Figure or SubFigure instead of a new Figure
        (``show_heatmap_groups`` puts one grid in each subfigure).
    cbar_label: text beside the colour bar.  cbar_ticks: {value: label}, the
        colour bar's only ticks (e.g. {0: "allowed", 1: "masked"}).

    Returns the Figure: rows * cols panel axes, then the colour bar's axes
    (the given ``fig`` if there was one).
    """
    plt = _pyplot()
    m = as_grid(matrices)                                     # (R, C, Tq, Tk)
    R, C, Tq, Tk = m.shape
    _check_titles(row_titles, R, "row_titles")
    _check_titles(col_titles, C, "col_titles")
    q_labels, k_labels = _split_tick_labels(tick_labels, Tq, Tk)
    vmin = float(np.nanmin(m)) if vmin is None else vmin
    vmax = float(np.nanmax(m)) if vmax is None else vmax
    if figsize is None:                                       # ~2.2 inch wide panels, true aspect
        figsize = (2.0 + 2.2 * C, 0.5 * (title is not None) + 0.8 + (2.2 * Tq / Tk + 0.3) * R)
    # shared axes: matplotlib shows tick labels on the bottom row and left column only
    if fig is None:
        fig = plt.figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(R, C, sharex=True, sharey=True, squeeze=False)
    for r in range(R):
        for c in range(C):
            ax = axes[r, c]
            image = ax.imshow(m[r, c], cmap=cmap, vmin=vmin, vmax=vmax)
            _label_panel(ax, r, c, R, xlabel, ylabel, row_titles, col_titles)
    _set_ticks(axes[0, 0], q_labels, k_labels)               # axes are shared: sets them all
    bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
    if cbar_ticks is not None:
        bar.set_ticks(list(cbar_ticks), labels=[str(t) for t in cbar_ticks.values()])
    if cbar_label is not None:
        bar.set_label(cbar_label)
    if title is not None:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, path)
    return fig


def show_heatmap_groups(groups, row_titles=None, col_titles=None, tick_labels=None,
                        cmap="Reds", vmin=0.0, title=None, path=None, figsize=None):
    """Grids of several models side by side, EACH WITH ITS OWN colour scale.

    groups: {name: (rows, cols, Tq, Tk) array}, e.g. {"bidirectional": avg,
        "causal": avg_causal}; every group gets a subfigure titled ``name``,
        drawn by ``show_heatmaps`` with one colour scale from ``vmin`` to that
        group's own maximum and its own colour bar. One shared scale would let
        a sharp model (a causal one's weights reach 0.4) wash out a flat one
        (0.05 to 0.15) into blank panels.
    row_titles: {name: list} or None; col_titles, tick_labels: shared by all
        groups. Returns the Figure.
    """
    plt = _pyplot()
    grids = {name: as_grid(m) for name, m in groups.items()}
    if figsize is None:
        R = max(g.shape[0] for g in grids.values())
        C = sum(g.shape[1] for g in grids.values())
        figsize = (2.6 * len(grids) + 2.2 * C, 0.5 * (title is not None) + 1.3 + 2.3 * R)
    fig = plt.figure(figsize=figsize, layout="constrained")
    widths = [g.shape[1] for g in grids.values()]
    subfigs = np.atleast_1d(fig.subfigures(1, len(grids), width_ratios=widths))
    for sub, (name, grid) in zip(subfigs, grids.items()):
        show_heatmaps(grid, row_titles=(row_titles or {}).get(name), col_titles=col_titles,
                      tick_labels=tick_labels, cmap=cmap, vmin=vmin,
                      vmax=float(np.nanmax(grid)), title=name, fig=sub)
    if title is not None:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, path)
    return fig


# The one colour convention of attention masks, in every notebook and figure:
# two colours, white = allowed (0), black = masked (1), named on the colour bar.
MASK_COLOURS = ("white", "black")
MASK_TICKS = {0.25: "allowed", 0.75: "masked\n(-10000)"}


def show_masks(masked, row_titles=None, col_titles=None, tick_labels=None,
               title="Attention masks (dark = masked)", path=None, figsize=None):
    """Attention masks in the one convention: DARK = MASKED, WHITE = ALLOWED.

    masked: (rows, cols, Tq, Tk), (cols, Tq, Tk) or (Tq, Tk) array with 1
        (or True) where query q may NOT attend to key j (the additive mask is
        -10000 there) and 0 where it may. From an additive mask ``m``:
        ``masked = m < 0``.
    The colour bar names the two colours. Returns the Figure.
    """
    m = np.asarray(masked, dtype=float)
    if not np.isin(m, (0.0, 1.0)).all():
        raise ValueError("show_masks needs 0 (allowed) or 1 (masked) entries; from an additive "
                         "mask m pass m < 0")
    from matplotlib.colors import ListedColormap
    return show_heatmaps(m, row_titles=row_titles, col_titles=col_titles,
                         tick_labels=tick_labels, cmap=ListedColormap(MASK_COLOURS),
                         vmin=0.0, vmax=1.0,
                         title=title, path=path, figsize=figsize, cbar_ticks=MASK_TICKS)


def _check_titles(titles, n, name):
    if titles is not None and len(titles) != n:
        raise ValueError(f"{name} has {len(titles)} entries but the grid has {n}")


def _label_panel(ax, r, c, R, xlabel, ylabel, row_titles, col_titles):
    """Titles on the top row, axis names on the bottom row and the left column only."""
    if r == 0 and col_titles is not None:
        ax.set_title(col_titles[c])
    if r == R - 1 and xlabel:
        ax.set_xlabel(xlabel)
    if c == 0:
        parts = [row_titles[r]] if row_titles is not None else []
        parts += [ylabel] if ylabel else []
        if parts:
            ax.set_ylabel("\n".join(parts))


def _set_ticks(ax, q_labels, k_labels):
    """Name every query (y) and key (x) position, if labels were given."""
    if k_labels is not None:
        ax.set_xticks(range(len(k_labels)))
        ax.set_xticklabels(k_labels)
        if max(map(len, k_labels)) > 2:                       # long names ("[MASK]") stand upright
            for other in ax.get_shared_x_axes().get_siblings(ax):
                other.tick_params(axis="x", labelrotation=90)
    if q_labels is not None:
        ax.set_yticks(range(len(q_labels)))
        ax.set_yticklabels(q_labels)


# ----------------------------------------------------------------------------
# Curves
# ----------------------------------------------------------------------------


def plot_lines(x, series, xlabel, ylabel, title=None, path=None, logx=False, logy=False,
               figsize=(5.0, 3.5), styles=None, ax=None):
    """One line per entry of ``series``, on one pair of axes.

    x: (P,) the shared x values.
    series: {label: y (P,)} or {label: (x_i (P_i,), y_i (P_i,))} for a curve
        with its own x values. Curves are drawn in this order, later ones on top.
    logx, logy: logarithmic axes (e.g. throughput against batch size).
    styles: {label: matplotlib line keywords}, e.g. {"tanh": dict(ls="--")},
        so curves that nearly coincide stay visible (a wide solid line under
        a thin dashed one).
    ax: draw on these axes (e.g. one panel of a larger figure) instead of a
        new Figure.
    Returns the Figure (the axes' figure when ``ax`` is given).
    """
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    else:
        fig = ax.figure
    for label, values in series.items():
        xs, ys = values if isinstance(values, tuple) else (x, values)
        ax.plot(np.asarray(xs), np.asarray(ys), label=str(label), **(styles or {}).get(label, {}))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if title is not None:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    if path is not None:
        save_figure(fig, path)
    return fig


def _history_x(history):
    """The x axis of a training history: 'minutes' when every entry has it, else 'epoch'."""
    key = "minutes" if all("minutes" in h for h in history) else "epoch"
    return key, np.array([h.get(key, i + 1) for i, h in enumerate(history)], dtype=float)


def plot_training_curve(history, path=None, metrics=("HR@10", "NDCG@10"), figsize=(9.0, 3.5)):
    """Training loss (left) and validation metrics (right) against wall-clock minutes.

    history: list of dicts, one per evaluation, e.g.
        {"epoch": 3, "minutes": 1.5, "loss": 7.1,
         "valid": {"HR@10": 0.21, "NDCG@10": 0.11}, "test": {...} (optional)}
    The x axis is "minutes" when every entry has it, else "epoch". Entries
    without "loss" or without "valid" are skipped in that panel; "test"
    values, where present, are drawn as dashed lines with crosses.
    Returns the Figure (two axes).
    """
    plt = _pyplot()
    if not history:
        raise ValueError("plot_training_curve needs a non-empty history")
    xkey, x = _history_x(history)
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=figsize, layout="constrained")
    has_loss = [i for i, h in enumerate(history) if "loss" in h]
    ax_loss.plot(x[has_loss], [history[i]["loss"] for i in has_loss], marker=".")
    ax_loss.set_ylabel("training loss")
    for split, style in (("valid", dict(marker="o")), ("test", dict(marker="x", ls="--"))):
        for name in metrics:
            rows = [i for i, h in enumerate(history) if name in h.get(split, {})]
            if rows:
                ax_metric.plot(x[rows], [history[i][split][name] for i in rows],
                               label=f"{split} {name}", **style)
    ax_metric.set_ylabel("metric")
    if ax_metric.lines:
        ax_metric.legend()
    for ax in (ax_loss, ax_metric):
        ax.set_xlabel(xkey)
        ax.grid(alpha=0.3)
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_runs_curves(histories, labels, target=None, metrics=("HR@10", "NDCG@10"),
                     split="test", path=None, title=None, figsize=(10.0, 3.8)):
    """One panel per metric: every run's ``split`` metric against wall-clock minutes.

    histories: one training history per run (see plot_training_curve); labels: one per run
    target: {metric: value} drawn as a dashed line (the paper's row), or None. Where a run
            first reaches every target metric, its point is ringed.
    Returns the Figure (one axis per metric).
    """
    plt = _pyplot()
    from .evaluate import first_reaching
    fig, axes = plt.subplots(1, len(metrics), figsize=figsize, layout="constrained", squeeze=False)
    for history, label in zip(histories, labels):
        rows = [h for h in history if split in h]
        if not rows:
            raise ValueError(f"{label}: its history has no {split!r} metrics "
                             f"(train with --track-test)")
        xkey, x = _history_x(rows)
        reached = first_reaching(rows, target) if target else None
        for ax, name in zip(axes[0], metrics):
            line, = ax.plot(x, [h[split][name] for h in rows], marker=".", label=label)
            if reached is not None:
                ax.plot(reached.get(xkey), reached[split][name], "o", ms=11, mfc="none",
                        color=line.get_color())
    for i, (ax, name) in enumerate(zip(axes[0], metrics)):
        if target and name in target:
            paper = ax.axhline(target[name], color="k", ls="--", lw=1,
                               label=f"paper {target[name]:.4f}")
            if i > 0:                     # the runs are named once, in the first panel
                ax.legend(handles=[paper], fontsize=8, loc="lower right")
        ax.set_xlabel(xkey)
        ax.set_ylabel(f"{split} {name}")
        ax.grid(alpha=0.3)
    if target:                            # what the rings mean, once
        axes[0][0].plot([], [], "o", ms=11, mfc="none", color="gray",
                        label="first at the paper's row")
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, path)
    return fig


# ----------------------------------------------------------------------------
# Positional encodings
# ----------------------------------------------------------------------------


def plot_positional_encodings(table, path=None, title="Positional encodings",
                              figsize=(6.0, 4.0)):
    """A position table (N, D) as a heat-map: rows = positions, columns = dimensions.

    The colour map is diverging and centred on 0 (blue negative, red positive,
    white zero), with limits +-max|table|, so sinusoidal and learned tables
    read the same way. Returns the Figure (the image's axes, then the colour bar's).
    """
    plt = _pyplot()
    t = np.asarray(table, dtype=float)
    if t.ndim != 2:
        raise ValueError(f"a position table is (positions, dimensions), got shape {t.shape}")
    limit = float(np.abs(t).max()) or 1.0
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    image = ax.imshow(t, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto",
                      interpolation="nearest")
    ax.set_xlabel("dimension")
    ax.set_ylabel("position")
    if title:
        ax.set_title(title)
    fig.colorbar(image, ax=ax)
    if path is not None:
        save_figure(fig, path)
    return fig


__all__ = ["show_heatmaps", "show_heatmap_groups", "show_masks", "plot_lines",
           "plot_training_curve", "plot_runs_curves", "plot_positional_encodings", "save_figure",
           "as_grid",
           "MASK_COLOURS", "MASK_TICKS"]
