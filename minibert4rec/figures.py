"""Every figure in the repository's figures/ folder, made by one command:

    python -m minibert4rec figures --run runs/beauty --causal-run runs/beauty-causal

writes (into --out, default figures/)
    positional_encodings.png     the sinusoidal table beside the run's learned table
    masks.png                    padding mask, causal mask, both, as additive masks
    gelu.png                     GELU (erf and tanh) against ReLU
    training_curve.png           loss and validation / test metrics against minutes (the run)
    beauty/figure2.png           the paper's Figure 2 from the run (+ attention_stats.json)
    beauty/figure2_causal.png    the same for the causal model (observation d)
    bidirectional_vs_causal.png  both models' maps in one grid
    beauty/metrics.json, config.json, state.json   copies of the run's small files (test
                                 metrics, settings, per-epoch history) for notebooks/README
    scaling.png                  training throughput against N, batch size and vocabulary
                                 (from the benchmark; skipped with --no-bench)
Nothing in figures/ is drawn by hand.
"""
from __future__ import annotations

import json
import os

import numpy as np


def _close(fig):
    import matplotlib.pyplot as plt
    plt.close(fig)


def static_figures(out):
    """The figures that need no trained model."""
    from .layers import additive_mask, gelu_forward, sinusoidal_table
    from .plotting import plot_lines, plot_positional_encodings, show_heatmaps
    os.makedirs(out, exist_ok=True)
    paths = []
    p = os.path.join(out, "sinusoidal_encoding.png")
    _close(plot_positional_encodings(sinusoidal_table(50, 64), path=p,
                                     title="Sinusoidal positional encoding (N = 50, D = 64)"))
    paths.append(p)
    key_mask = np.array([[True] * 5 + [False] * 2])                       # 5 items, 2 padding
    masks = [additive_mask(key_mask)[0, 0, 0][None].repeat(7, 0),
             additive_mask(key_mask, causal=True)[0, 0]]
    causal_only = additive_mask(np.ones((1, 7), dtype=bool), causal=True)[0, 0]
    grid = np.stack([masks[0], causal_only, masks[1]])[None] / -10000.0  # 1 = masked
    p = os.path.join(out, "masks.png")
    _close(show_heatmaps(grid, col_titles=["padding (keys 5, 6)", "causal", "causal + padding"],
                         cmap="Greys", vmin=0, vmax=1,
                         title="Additive attention masks (dark = -10000, i.e. masked)", path=p))
    paths.append(p)
    x = np.linspace(-4, 4, 401)
    p = os.path.join(out, "gelu.png")
    _close(plot_lines(x, {"GELU (erf, exact)": gelu_forward(x, "erf")[0],
                          "GELU (tanh approximation)": gelu_forward(x, "tanh")[0],
                          "ReLU": np.maximum(x, 0)}, "x", "activation",
                      title="GELU against ReLU", path=p))
    paths.append(p)
    return paths


def run_figures(run, causal_run, out, data_dir=None, k=10, command=None):
    """The figures that come from trained runs (Beauty in the README)."""
    from .analysis import attention_stats, collect_attention, write_attention_report
    from .data import leave_one_out
    from .plotting import plot_positional_encodings, plot_training_curve, show_heatmaps
    from .train import dataset_of, load_json, load_run
    paths = []
    model, tcfg, conf = load_run(run)
    if data_dir:
        tcfg.data_dir = data_dir
    ds = dataset_of(tcfg)
    split = leave_one_out(ds)
    sub = os.path.join(out, os.path.basename(os.path.normpath(run)).split("-")[0] or "run")
    os.makedirs(sub, exist_ok=True)
    if "pos_emb" in model.params:
        p = os.path.join(out, "learned_positions.png")
        _close(plot_positional_encodings(model.params["pos_emb"], path=p,
                                         title=f"Learned position table of {run}"))
        paths.append(p)
    state = load_json(os.path.join(run, "state.json"))
    p = os.path.join(out, "training_curve.png")
    _close(plot_training_curve(state["history"], path=p))
    paths.append(p)
    # the run's own small JSON files, so notebooks and the README can read the full run
    # without its weights: metrics.json (test), config.json, state.json (history, timings)
    import shutil
    for name in ("metrics.json", "config.json", "state.json"):
        if os.path.exists(os.path.join(run, name)):
            shutil.copyfile(os.path.join(run, name), os.path.join(sub, name))
            paths.append(os.path.join(sub, name))
    summary = {"command": command, "run": run, "best_epoch": state.get("best_epoch"),
               "epochs": state.get("epoch"), "minutes": round(state.get("elapsed", 0) / 60, 1)}
    with open(os.path.join(sub, "figures_command.json"), "w") as f:
        json.dump(summary, f, indent=1)
    avg = collect_attention(model, split.test_input, k=k)
    stats_c, avg_c = None, None
    if causal_run:
        model_c, tcfg_c, _ = load_run(causal_run)
        avg_c = collect_attention(model_c, split.test_input, k=k)
        stats_c = attention_stats(avg_c)
        paths.extend(map(str, write_attention_report(
            avg_c, sub, name="figure2_causal", stats_file="attention_stats_causal.json",
            title=f"Causal (SASRec-style) model, last {k} positions ({k - 1} = [MASK])")))
    paths.extend(map(str, write_attention_report(avg, sub, stats_causal=stats_c)))
    if avg_c is not None:
        L, H = avg.shape[:2]
        both = np.concatenate([avg, avg_c])                                 # (2L, H, k, k)
        rows = [f"bidirectional L{l + 1}" for l in range(L)] + \
               [f"causal L{l + 1}" for l in range(avg_c.shape[0])]
        p = os.path.join(out, "bidirectional_vs_causal.png")
        from .analysis import window_labels
        _close(show_heatmaps(both, row_titles=rows, col_titles=[f"head {h + 1}" for h in range(H)],
                             tick_labels=window_labels(k), vmin=0.0, path=p,
                             title="BERT4Rec (bidirectional) against a causal model"))
        paths.append(p)
    return paths


def scaling_figure(out, steps=5):
    """Throughput against N, batch size and vocabulary size (see bench.scaling)."""
    import matplotlib.pyplot as plt

    from .bench import scaling
    specs = {"max_len": [25, 50, 100, 200], "batch": [64, 128, 256, 512],
             "vocab": [3_418, 13_636, 54_544, 218_176]}
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    table = {}
    for ax, (vary, values) in zip(axes, specs.items()):
        rows = scaling("beauty", vary=vary, values=values, steps=steps)
        table[vary] = rows
        ax.plot(values, [r["train_sequences_per_s"] for r in rows], "o-")
        ax.set_xscale("log")
        ax.set_xlabel(vary)
        ax.set_ylabel("training sequences / s")
        ax.grid(alpha=0.3)
    fig.suptitle("Beauty configuration: throughput as one setting varies")
    fig.tight_layout()
    p = os.path.join(out, "scaling.png")
    fig.savefig(p, dpi=150)
    plt.close(fig)
    with open(os.path.join(out, "scaling.json"), "w") as f:
        json.dump(table, f, indent=1)
    return [p, os.path.join(out, "scaling.json")]


__all__ = ["static_figures", "run_figures", "scaling_figure"]
