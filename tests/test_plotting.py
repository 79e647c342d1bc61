"""The plotting helpers: grid shape from the data, one colour scale, labels on the edge, PNGs.

Matrices have a different size on every axis (queries 4, keys 6), so a
transposed panel changes the image's shape and fails.
"""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from minibert4rec import plotting as P  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def panels(fig):
    """The heat-map axes (those holding an image), excluding the colour bar."""
    return [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]


def test_grid_follows_the_array_shape_and_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    m = rng.random((3, 4, 4, 6))                       # 3 rows x 4 cols of (4 queries, 6 keys)
    path = tmp_path / "deep" / "dir" / "grid.png"
    fig = P.show_heatmaps(m, row_titles=["a", "b", "c"], col_titles=list("wxyz"), path=path)
    assert len(fig.axes) == 3 * 4 + 1                  # 12 panels + ONE colour bar
    assert len(panels(fig)) == 12
    for i, ax in enumerate(panels(fig)):               # row-major, each its matrix, untransposed
        np.testing.assert_array_equal(ax.images[0].get_array(), m[i // 4, i % 4])
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert plt.fignum_exists(fig.number)               # still open for the caller


def test_one_shared_colour_scale():
    m = np.zeros((2, 3, 4, 6))
    m[0, 0] = 1.0
    m[1, 2, 0, 0] = -2.0
    fig = P.show_heatmaps(m)
    assert {ax.images[0].get_clim() for ax in panels(fig)} == {(-2.0, 1.0)}
    fig = P.show_heatmaps(m, vmin=0.0, vmax=0.5)
    assert {ax.images[0].get_clim() for ax in panels(fig)} == {(0.0, 0.5)}


def test_labels_only_on_the_outer_edge():
    fig = P.show_heatmaps(np.ones((2, 3, 4, 6)), row_titles=["layer 1", "layer 2"],
                          col_titles=["head 1", "head 2", "head 3"])
    axes = np.array(panels(fig)).reshape(2, 3)
    assert [ax.get_xlabel() for ax in axes.flat] == ["", "", "", "key", "key", "key"]
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["layer 1\nquery", "layer 2\nquery"]
    assert all(ax.get_ylabel() == "" for ax in axes[:, 1:].flat)
    assert [ax.get_title() for ax in axes[0]] == ["head 1", "head 2", "head 3"]
    assert all(ax.get_title() == "" for ax in axes[1])
    fig.canvas.draw()
    assert all(not any(t.get_visible() for t in ax.get_xticklabels()) for ax in axes[0])
    assert all(not any(t.get_visible() for t in ax.get_yticklabels()) for ax in axes[:, 1])


def test_tick_labels_name_every_position():
    labels = [str(i) for i in range(4)] + ["[MASK]"]
    fig = P.show_heatmaps(np.eye(5)[None, None].repeat(2, axis=1), tick_labels=labels)
    ax = panels(fig)[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == labels
    assert [t.get_text() for t in ax.get_yticklabels()] == labels
    fig = P.show_heatmaps(np.ones((4, 6)), tick_labels=(list("abcd"), list("uvwxyz")))
    ax = panels(fig)[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == list("abcd")
    assert [t.get_text() for t in ax.get_xticklabels()] == list("uvwxyz")
    with pytest.raises(ValueError, match="tick labels"):
        P.show_heatmaps(np.ones((4, 6)), tick_labels=list("abcd"))


def test_two_and_three_dimensional_input():
    fig = P.show_heatmaps(np.eye(4)[:, :3])            # one panel (4, 3)
    assert len(fig.axes) == 2
    assert panels(fig)[0].images[0].get_array().shape == (4, 3)
    fig = P.show_heatmaps(np.ones((5, 4, 6)))          # one row of 5
    assert len(fig.axes) == 6
    with pytest.raises(ValueError, match="2-D, 3-D or 4-D"):
        P.show_heatmaps(np.ones(3))
    with pytest.raises(ValueError, match="row_titles"):
        P.show_heatmaps(np.ones((2, 2, 3, 3)), row_titles=["only one"])


def test_training_curve(tmp_path):
    history = [{"epoch": e, "minutes": 0.5 * e, "loss": 8.0 - e,
                "valid": {"HR@10": 0.1 * e, "NDCG@10": 0.05 * e}} for e in range(1, 5)]
    history[-1]["test"] = {"HR@10": 0.38, "NDCG@10": 0.2}
    fig = P.plot_training_curve(history, path=tmp_path / "curve.png")
    ax_loss, ax_metric = fig.axes
    np.testing.assert_array_equal(ax_loss.lines[0].get_xdata(), [0.5, 1.0, 1.5, 2.0])
    assert ax_loss.get_xlabel() == "minutes"
    labels = [line.get_label() for line in ax_metric.lines]
    assert labels == ["valid HR@10", "valid NDCG@10", "test HR@10", "test NDCG@10"]
    np.testing.assert_allclose(ax_metric.lines[1].get_ydata(), [0.05, 0.1, 0.15, 0.2])
    assert (tmp_path / "curve.png").read_bytes()[:8] == PNG_MAGIC


def test_plot_lines(tmp_path):
    x = np.linspace(-3, 3, 7)
    fig = P.plot_lines(x, {"relu": np.maximum(x, 0), "own x": ([1, 2], [3, 4])}, "x", "y",
                       title="t", path=tmp_path / "l.png", logy=False)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["relu", "own x"]
    np.testing.assert_array_equal(ax.lines[1].get_xdata(), [1, 2])
    assert (tmp_path / "l.png").read_bytes()[:8] == PNG_MAGIC
    fig = P.plot_lines([1, 10, 100], {"a": [1, 2, 3]}, "batch", "items/s", "s", logx=True)
    assert fig.axes[0].get_xscale() == "log" and fig.axes[0].get_yscale() == "linear"


def test_positional_encodings_use_a_symmetric_diverging_scale(tmp_path):
    table = np.linspace(-0.2, 0.5, 6 * 8).reshape(6, 8)
    fig = P.plot_positional_encodings(table, path=tmp_path / "pe.png")
    image = fig.axes[0].images[0]
    assert image.get_clim() == (-0.5, 0.5)
    assert image.get_array().shape == (6, 8)
    assert image.get_cmap().name == "RdBu_r"
    assert (tmp_path / "pe.png").read_bytes()[:8] == PNG_MAGIC


def test_masks_have_one_convention_dark_is_masked():
    masked = np.tril(np.ones((5, 5)), -1).T.astype(bool)          # causal: keys right of the query
    fig = P.show_masks(masked)
    (ax,) = panels(fig)
    image = ax.images[0]
    assert image.get_clim() == (0.0, 1.0)
    # 1 = masked is drawn black, 0 = allowed white, and the colour bar says so
    assert image.cmap(image.norm(1.0))[:3] == (0.0, 0.0, 0.0)
    assert image.cmap(image.norm(0.0))[:3] == (1.0, 1.0, 1.0)
    bar = next(a for a in fig.axes if a.get_label() == "<colorbar>")
    assert [t.get_text() for t in bar.get_yticklabels()] == ["allowed", "masked\n(-10000)"]
    with pytest.raises(ValueError, match="m < 0"):
        P.show_masks(np.array([[0.0, -10000.0]]))                 # an additive mask, not 0/1


def test_groups_get_their_own_colour_scale(tmp_path):
    flat = np.full((2, 2, 4, 6), 0.1)
    sharp = np.zeros((2, 2, 4, 6))
    sharp[..., 0] = 0.9
    fig = P.show_heatmap_groups({"flat": flat, "sharp": sharp}, col_titles=["h1", "h2"],
                                path=tmp_path / "g.png")
    clims = [ax.images[0].get_clim() for ax in panels(fig)]
    assert clims == [(0.0, 0.1)] * 4 + [(0.0, 0.9)] * 4           # not one scale up to 0.9
    bars = [a for a in fig.axes if a.get_label() == "<colorbar>"]
    assert len(bars) == 2
    assert (tmp_path / "g.png").read_bytes()[:8] == PNG_MAGIC


def test_plot_lines_styles_and_given_axes():
    fig, (a, b) = plt.subplots(1, 2)
    x = np.linspace(0, 1, 5)
    out = P.plot_lines(x, {"wide": x, "dashed": x}, "x", "y", ax=b,
                       styles={"wide": dict(lw=5), "dashed": dict(ls="--")})
    assert out is fig and not a.lines
    assert [line.get_linewidth() for line in b.lines][0] == 5
    assert b.lines[1].get_linestyle() == "--"
