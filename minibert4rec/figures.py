"""Every figure in the repository's figures/ folder, made by one command:

    python -m minibert4rec figures --run runs/beauty --causal-run runs/beauty-causal

writes (into --out, default figures/)
    sinusoidal_encoding.png      the fixed sinusoidal table
    learned_positions.png        the run's learned position table
    masks.png                    padding mask, causal mask, both (black = masked, as everywhere)
    gelu.png                     GELU (erf and tanh) against ReLU, and exact minus tanh
    training_curve.png           loss and validation / test metrics against minutes (the run)
    DATASET/seeds_curves.png     with --seed-runs: several seeds' test curves, the paper's row
    DATASET/seeds.json           their test metrics, mean and spread, time to the paper's row
    beauty/figure2.png           the paper's Figure 2 from the run (+ attention_stats.json)
    beauty/figure2_causal.png    the same for the causal model (observation d)
    bidirectional_vs_causal.png  both models' maps, each model on its own colour scale
                                 (without --run: redrawn from the averages saved in
                                 beauty/attention_stats*.json, when both files exist)
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

from .plotting import save_figure


def _close(fig):
    import matplotlib.pyplot as plt
    plt.close(fig)


def static_figures(out):
    """The figures that need no trained model (and the comparison redrawn from saved averages)."""
    from .layers import additive_mask, gelu_forward, sinusoidal_table
    from .plotting import plot_lines, plot_positional_encodings, show_masks
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
    masked = np.stack([masks[0], causal_only, masks[1]])[None] < 0       # (1, 3, 7, 7) True = masked
    p = os.path.join(out, "masks.png")
    _close(show_masks(masked, col_titles=["padding (keys 5, 6)", "causal", "causal + padding"],
                      title="Attention masks (dark = masked: -10000 added to the score)", path=p))
    paths.append(p)
    paths.append(gelu_figure(os.path.join(out, "gelu.png"), gelu_forward, plot_lines))
    paths.extend(saved_comparison_figure(out))
    return paths


def gelu_figure(path, gelu_forward, plot_lines):
    """GELU (exact, erf; tanh approximation) against ReLU, and the two GELUs' difference.

    The two GELU curves differ by less than 1e-3, so on one plot the second
    drawn hides the first: the exact curve is a wide solid line under a thin
    dashed approximation, and the right panel shows exact minus tanh.
    """
    import matplotlib.pyplot as plt
    x = np.linspace(-4, 4, 401)
    exact, approx = gelu_forward(x, "erf")[0], gelu_forward(x, "tanh")[0]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.6), layout="constrained")
    plot_lines(x, {"ReLU": np.maximum(x, 0), "GELU (erf, exact)": exact,
                   "GELU (tanh approximation)": approx}, "x", "activation",
               title="GELU against ReLU", ax=left,
               styles={"ReLU": dict(color="0.6"),
                       "GELU (erf, exact)": dict(lw=5, alpha=0.45, color="tab:blue"),
                       "GELU (tanh approximation)": dict(lw=1.5, ls="--", color="tab:red")})
    plot_lines(x, {"exact - tanh": exact - approx}, "x", "difference",
               title="The two GELUs differ by < 1e-3", ax=right,
               styles={"exact - tanh": dict(color="tab:purple")})
    save_figure(fig, path)
    _close(fig)
    return path


def comparison_figure(avg, avg_causal, path, k):
    """Both models' average attention, each model on its own colour scale."""
    from .analysis import window_labels
    from .plotting import show_heatmap_groups
    groups = {"BERT4Rec (bidirectional)": avg, "causal (left-to-right)": avg_causal}
    rows = {name: [f"layer {l + 1}" for l in range(len(a))] for name, a in groups.items()}
    _close(show_heatmap_groups(groups, row_titles=rows,
                               col_titles=[f"head {h + 1}" for h in range(np.shape(avg)[1])],
                               tick_labels=window_labels(k), path=path,
                               title=f"Average attention, last {k} positions ({k - 1} = [MASK]); "
                                     f"each model on its own colour scale"))
    return path


def saved_comparison_figure(out, folder="beauty"):
    """bidirectional_vs_causal.png from out/<folder>/attention_stats*.json, if both exist."""
    files = [os.path.join(out, folder, name) for name in
             ("attention_stats.json", "attention_stats_causal.json")]
    if not all(os.path.exists(f) for f in files):
        return []
    avg, avg_causal = (np.array(json.load(open(f))["average_attention"]) for f in files)
    return [comparison_figure(avg, avg_causal, os.path.join(out, "bidirectional_vs_causal.png"),
                              avg.shape[-1])]


def run_figures(run, causal_run, out, data_dir=None, k=10, command=None):
    """The figures that come from trained runs (Beauty in the README)."""
    from .analysis import (attention_stats, collect_attention, learned_enough,
                           write_attention_report)
    from .plotting import plot_positional_encodings, plot_training_curve
    from .data import check_same_data, leave_one_out
    from .evaluate import popularity_metrics, test_metrics
    from .runs import load_run, load_run_and_data, read_json
    paths = []
    model, tcfg, conf, ds = load_run_and_data(run, data_dir, last=k)
    split = leave_one_out(ds)
    sub = os.path.join(out, os.path.basename(os.path.normpath(run)).split("-")[0] or "run")
    os.makedirs(sub, exist_ok=True)
    if "pos_emb" in model.params:
        p = os.path.join(out, "learned_positions.png")
        _close(plot_positional_encodings(model.params["pos_emb"], path=p,
                                         title=f"Learned position table of {run}"))
        paths.append(p)
    state = read_json(os.path.join(run, "state.json"))
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
        check_same_data(model_c, ds, causal_run)
        avg_c = collect_attention(model_c, split.test_input, k=k)
        stats_c = attention_stats(avg_c)
        paths.extend(map(str, write_attention_report(
            avg_c, sub, name="figure2_causal", stats_file="attention_stats_causal.json",
            title=f"Causal (SASRec-style) model, last {k} positions ({k - 1} = [MASK])")))
    # the verdicts on the paper's claims only for a model that beat popularity (analysis.py)
    metrics_path = os.path.join(run, "metrics.json")
    metrics = read_json(metrics_path) if os.path.exists(metrics_path) else {}
    if not {"sampled", "full"} <= set(metrics):
        metrics = test_metrics(model, ds, split, "both", seed=tcfg.test_seed, n_negatives=tcfg.n_negatives)
    skill = learned_enough(metrics, popularity_metrics(ds, split, "both", seed=tcfg.test_seed,
                                                       n_negatives=tcfg.n_negatives))
    paths.extend(map(str, write_attention_report(avg, sub, stats_causal=stats_c, skill=skill)))
    if avg_c is not None:
        paths.append(comparison_figure(avg, avg_c, os.path.join(out, "bidirectional_vs_causal.png"), k))
    return paths


def seeds_figure(run_dirs, out, command=None):
    """Several runs of one setting (seeds): their test curves in one plot, mean and spread.

    run_dirs: runs of the same dataset trained with --track-test and one test-negatives seed
    (the same --negatives-seed, or all seed 0), so every run is scored on the same candidates.
    Writes out/<dataset>/seeds_curves.png (test HR@10 and NDCG@10 against minutes, the paper's
    row dashed, the first epoch at which a run reaches it ringed) and out/<dataset>/seeds.json:
    per run its seed, epochs, minutes, kept epoch, test metrics (metrics.json: "test" sampled,
    "test_full" full ranking when the run has it), its curve (epoch, minutes and test metrics
    after every epoch, from state.json) and the first epoch and minute at which it reaches the
    paper's row; then the mean, std, min and max of the sampled metrics, and under "full" those
    of the full-ranking ones (when every run has them).
    """
    from .errors import InputError
    from .evaluate import PAPER_ROWS, first_reaching, spread
    from .plotting import plot_runs_curves
    from .runs import read_json, read_run_config
    rows, histories, datasets, test_seeds = [], [], set(), set()
    for run in run_dirs:
        _, tcfg, _ = read_run_config(run)
        state = read_json(os.path.join(run, "state.json"), "run state (state.json)")
        metrics_path = os.path.join(run, "metrics.json")
        if not os.path.exists(metrics_path):
            raise InputError(f"{run}: no metrics.json (the run has not finished; resume it first)")
        metrics = read_json(metrics_path, "test metrics (metrics.json)")
        if not isinstance(metrics, dict) or not isinstance(metrics.get("sampled"), dict):
            raise InputError(f"{metrics_path}: no sampled-protocol metrics (write them with "
                             f"evaluate --run {run} --protocol sampled --save)")
        history = state.get("history", [])
        if not any("test" in h for h in history):
            raise InputError(f"{run}: its history has no test metrics: train it with --track-test")
        datasets.add(os.path.basename(tcfg.dataset).split(".")[0])
        test_seeds.add(tcfg.test_seed)
        histories.append(history)
        row = {"run": run, "seed": tcfg.seed, "epochs": state.get("epoch"),
               "minutes": round(state.get("elapsed", 0) / 60, 1),
               "kept_epoch": state.get("best_epoch"), "test": metrics["sampled"]}
        if isinstance(metrics.get("full"), dict):
            row["test_full"] = metrics["full"]
        row["curve"] = [{"epoch": h["epoch"], "minutes": h["minutes"], "test": h["test"]}
                        for h in history if "test" in h]
        rows.append(row)
    if len(datasets) != 1:
        raise InputError(f"--seed-runs: the runs are of different datasets ({sorted(datasets)})")
    if len(test_seeds) != 1:
        raise InputError(f"--seed-runs: the runs' test negatives differ (seeds {sorted(test_seeds)}): "
                         f"train them with the same --negatives-seed to compare them")
    dataset, = datasets
    target = PAPER_ROWS.get(dataset)
    for row, history in zip(rows, histories):
        reached = first_reaching(history, target) if target else None
        row["reaches_paper_row"] = (None if reached is None else
                                    {"epoch": reached["epoch"], "minutes": reached["minutes"]})
    sub = os.path.join(out, dataset)
    os.makedirs(sub, exist_ok=True)
    p = os.path.join(sub, "seeds_curves.png")
    seeds = [r["seed"] for r in rows]
    labels = ([f"seed {s}" for s in seeds] if len(set(seeds)) == len(seeds) else   # else the folders
              [os.path.basename(os.path.normpath(r["run"])) for r in rows])
    _close(plot_runs_curves(histories, labels, target=target, path=p,
                            title=f"{dataset}: test metrics (sampled) of {len(rows)} runs"))
    summary = {"command": command, "dataset": dataset, "negatives_seed": test_seeds.pop(),
               "paper_row": target, "runs": rows, **spread([r["test"] for r in rows])}
    if all("test_full" in r for r in rows):
        summary["full"] = spread([r["test_full"] for r in rows])
    j = os.path.join(sub, "seeds.json")
    with open(j, "w") as f:
        json.dump(summary, f, indent=1)
    return [p, j]


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
