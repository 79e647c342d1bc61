"""The command line: a thin shell over the library.

    python -m minibert4rec demo | train | evaluate | recommend | attention |
                           download | figures | bench | gradcheck
    python -m minibert4rec --help            (every command has its own --help)

Bad input never shows a Python traceback: the command prints one line naming
the problem (file and line for data files) and exits with status 2. Add
``--debug`` (before the command) to see the traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import InputError, int_at_least


def cmd_gradcheck(args) -> int:
    from .gradcheck import suite
    results = suite(seed=args.seed, kernels=args.kernels)
    failed = [r for r in results if not r.passed]
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=1))
    else:
        print(f"{'component':42s} {'tensor':13s} {'max rel error':>13s} {'tolerance':>9s}  result")
        for r in results:
            print(f"{r.component:42s} {r.tensor:13s} {r.max_rel_error:13.2e} {r.tol:9.0e}  "
                  f"{'pass' if r.passed else 'FAIL'}")
        parts = sorted({r.component.split(" ")[0] for r in results if r.component[0].isdigit()}, key=int)
        print(f"\n{len(results)} gradients in {len(parts)} layer parts + the whole model: "
              f"{len(results) - len(failed)} passed, {len(failed)} failed "
              f"(max relative error {max(r.max_rel_error for r in results):.1e})")
    return 1 if failed else 0


def _print_metrics_table(rows: dict, protocol_names=("sampled", "full")):
    """rows: label -> {"sampled": {...}, "full": {...}}; prints one table per protocol."""
    from .evaluate import METRIC_KEYS
    for proto in protocol_names:
        present = [(label, m[proto]) for label, m in rows.items() if proto in m]
        if not present:
            continue
        print(f"\n{proto} protocol" + (" (true item vs popularity-sampled negatives)"
                                        if proto == "sampled" else " (true item vs all items)"))
        print(f"{'':22s}" + "".join(f"{k:>9s}" for k in METRIC_KEYS))
        for label, m in present:
            print(f"{label:22s}" + "".join(f"{m[k]:9.4f}" for k in METRIC_KEYS))


def _train_config(args):
    from .settings import TrainConfig
    keys = ("dataset", "data_dir", "epochs", "minutes", "seed", "lr", "batch_size", "hidden",
            "layers", "heads", "max_len", "mask_ratio", "position", "attention", "gelu",
            "warmup", "track_test", "min_interactions", "decay_epochs", "threads",
            "holdout_validation", "cloze_copies", "n_negatives", "kernels", "negatives_seed",
            "sliding_step")
    kw = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if getattr(args, "dropout", None) is not None:
        kw["hidden_dropout"] = args.dropout
    if getattr(args, "attention_dropout", None) is not None:
        kw["attention_dropout"] = args.attention_dropout
    kw["progress"] = not args.no_progress
    return TrainConfig(**kw)


# What `train --resume` takes (besides --resume and an equal --out); every other option
# belongs to the run's config.json and changing it would not continue the same run.
RESUME_OPTIONS = ("epochs", "minutes", "threads", "kernels", "data_dir", "no_progress")


def _check_resume_options(args) -> None:
    """Refuse the options a resume cannot take, naming them (argparse defaults = not given)."""
    given = [a for a in args.parser._actions
             if a.dest not in RESUME_OPTIONS + ("resume", "out", "help")
             and getattr(args, a.dest, a.default) != a.default]
    if given:
        names = ", ".join(a.option_strings[0] for a in given)
        takes = ", ".join("--" + o.replace("_", "-") for o in RESUME_OPTIONS)
        raise InputError(f"--resume continues {args.resume} with the settings in its config.json; "
                         f"it takes only {takes}: {names} cannot change (start a new run with "
                         f"--out NEW_DIR for other settings)")


def cmd_train(args) -> int:
    from .evaluate import popularity_metrics
    from .runs import read_run_config
    from .settings import dataset_of
    from .train import train
    run_dir = args.resume or args.out
    if args.resume and args.out and args.out != args.resume:
        raise InputError("give either --out RUN_DIR or --resume RUN_DIR, not both")
    if args.resume:
        _check_resume_options(args)
    if not run_dir:
        run_dir = f"runs/{os.path.basename(str(args.dataset or 'synthetic')).split('.')[0]}"
    tcfg = _train_config(args)
    if args.resume and os.path.isdir(run_dir) and os.path.exists(os.path.join(run_dir, "config.json")):
        # epochs, threads and kernels not given: the run's own (it computes as it did)
        from dataclasses import replace
        saved = read_run_config(run_dir)[1]
        defaults = {a.dest: a.default for a in args.parser._actions}
        tcfg = replace(tcfg, epochs=args.epochs,          # None: up to the run's own --epochs
                       threads=saved.threads if args.threads is None else args.threads,
                       kernels=(saved.kernels if args.kernels == defaults["kernels"]
                                else args.kernels))
    metrics = train(tcfg, run_dir, resume=bool(args.resume), overwrite=args.overwrite)
    if metrics is None:                       # Ctrl-C: checkpoint saved, nothing to report
        return 130
    if args.resume:                           # the run's own settings, as training used them
        _, tcfg, _ = read_run_config(run_dir)
    ds = dataset_of(tcfg.resolved())
    label = "BERT4Rec (this run)" if tcfg.attention == "bidirectional" else "causal (this run)"
    rows = {label: metrics, "popularity baseline": popularity_metrics(ds, seed=tcfg.test_seed,
                                                                      n_negatives=tcfg.n_negatives)}
    _print_metrics_table(rows)
    print(f"\nrun directory: {run_dir} (metrics.json, config.json, weights.npz)")
    return 0


def cmd_evaluate(args) -> int:
    import contextlib
    from .evaluate import popularity_metrics, test_metrics
    from .runs import METRICS, RunFolder, load_run_and_data, read_json
    with contextlib.ExitStack() as stack:
        # --save writes into the run folder: take it first (one writer), so that a folder in
        # use is reported at once, not after the evaluation
        folder = (stack.enter_context(RunFolder.open(args.run, what="save metrics into"))
                  if args.save else None)
        if folder is not None and not os.access(args.run, os.W_OK):     # say so before the work
            from .files import cannot_write
            raise cannot_write(os.path.join(args.run, METRICS),
                               PermissionError(13, "Permission denied"))
        model, tcfg, _, ds = load_run_and_data(args.run, args.data_dir)
        seed = tcfg.test_seed if args.negatives_seed is None else args.negatives_seed
        if args.save and seed != tcfg.test_seed:
            raise InputError("--save keeps metrics.json comparable with the run's own: it cannot "
                             "be combined with --negatives-seed")
        metrics = test_metrics(model, ds, protocol=args.protocol, seed=seed,
                               progress=not args.json, n_negatives=tcfg.n_negatives)
        if folder is not None:                # one protocol updates its block, keeps the other
            path = folder.file(METRICS)
            saved = read_json(path) if os.path.exists(path) else {}
            if not isinstance(saved, dict):
                raise InputError(f"{path}: expected an object {{...}} of metrics")
            folder.write_json(METRICS, {**saved, **metrics})
    pop = popularity_metrics(ds, protocol=args.protocol, seed=seed, n_negatives=tcfg.n_negatives)
    if args.json:                             # the run's {sampled, full} + the baseline's
        print(json.dumps({**metrics, "popularity": pop}, indent=1))
        return 0
    _print_metrics_table({"BERT4Rec": metrics, "popularity baseline": pop})
    return 0


def cmd_recommend(args) -> int:
    import numpy as np
    from .runs import load_run
    model, tcfg, _ = load_run(args.run)
    items_path = os.path.join(args.run, "items.txt")
    raw = _read_items(items_path, model.cfg.vocab_size - 2)
    index = {r: i + 1 for i, r in enumerate(raw)}
    unknown = [x for x in args.items if x not in index]
    if unknown:
        raise InputError(f"unknown item id(s) {', '.join(unknown[:5])}: the model of {args.run} "
                         f"knows {len(raw)} items (see {items_path})")
    history = np.array([index[x] for x in args.items], dtype=np.int64)
    scores = model.score_next([history])[0].astype(np.float64)
    scores[[0, model.cfg.mask_id]] = -np.inf                    # never padding or [MASK]
    if not args.include_seen:
        scores[history] = -np.inf
    top = np.argsort(-scores, kind="stable")[:args.k]
    top = top[np.isfinite(scores[top])]                      # never padding, [MASK] or (unless
    if len(top) == 0:                                         # --include-seen) the history
        raise InputError(f"no item left to recommend: the history holds all {len(raw)} items "
                         f"the model knows (add --include-seen)")
    shown = "" if len(top) == args.k else f" (only {len(top)} items left outside the history)"
    print(f"top {len(top)} next items after {' '.join(args.items)}{shown}:")
    for rank, i in enumerate(top, 1):
        print(f"{rank:3d}. {raw[i - 1]:>12s}   score {scores[i]:.3f}")
    return 0


def _read_items(path, n_items) -> list[str]:
    """The lines of a run's items.txt (item i's original id on line i), checked."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(2, "file not found (the run's item ids)", path) from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    raw = text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")
    if len(raw) != n_items:
        raise InputError(f"{path}: lists {len(raw)} items, the model knows {n_items}: the file "
                         f"does not belong to this run")
    return raw


def _attention_of_run(run_dir, k, data_dir=None):
    """(L, H, k, k) average attention of a run's best model over its test users."""
    from .analysis import collect_attention
    from .data import leave_one_out
    from .runs import load_run_and_data
    model, tcfg, _, ds = load_run_and_data(run_dir, data_dir, last=k)
    split = leave_one_out(ds)
    try:
        return collect_attention(model, split.test_input, k=k), model.cfg
    except ValueError as e:                   # no history is long enough for the window
        raise InputError(f"{run_dir}: --last {k}: {e}") from None


def cmd_attention(args) -> int:
    from .analysis import attention_stats, describe_skill, skill_of_run, write_attention_report
    if args.user is not None:
        return _user_attention(args)
    out = args.out or os.path.join(args.run, "attention")
    avg, cfg = _attention_of_run(args.run, args.last, args.data_dir)
    causal_stats = None
    if args.causal_run:
        avg_c, cfg_c = _attention_of_run(args.causal_run, args.last, args.data_dir)
        if cfg_c.attention != "causal":
            raise InputError(f"--causal-run {args.causal_run} is not a causal model "
                             f"(attention = {cfg_c.attention})")
        causal_stats = attention_stats(avg_c)
        write_attention_report(avg_c, out, name="figure2_causal",
                               stats_file="attention_stats_causal.json",
                               title=f"Causal (left-to-right) model: last {args.last} positions")
    skill = skill_of_run(args.run, args.data_dir)     # verdicts only if the model beat popularity
    png, js = write_attention_report(avg, out, stats_causal=causal_stats, skill=skill)
    print(describe_skill(skill) + "\n")
    _print_observations(json.loads(open(js).read())["observations"])
    print(f"\nwrote {png} and {js}")
    return 0


def _print_observations(obs: dict):
    """One line per claim: the verdict (agrees / does not agree / not trained enough) and its rule."""
    for key, o in obs.items():
        print(f"{key:40s} {o['verdict']:33s} {o.get('rule', '')}")


def _user_attention(args) -> int:
    """attention --user ID: one user's map over the last positions, labelled with item titles."""
    import re

    from .analysis import mask_row_summary, sequence_attention, write_user_attention
    from .data import item_labels, item_titles, item_titles_file, leave_one_out
    from .runs import load_run_and_data
    if args.causal_run:
        raise InputError("--user draws one run's map; --causal-run belongs to the average over "
                         "all users (without --user)")
    model, tcfg, _, ds = load_run_and_data(args.run, args.data_dir)
    users = {u: i for i, u in enumerate(ds.raw_user_ids.tolist())}
    if args.user not in users:
        raise InputError(f"unknown user {args.user!r}: the data set of {args.run} ({ds.name}) has "
                         f"{len(users)} users, e.g. {', '.join(list(users)[:5])}")
    history = leave_one_out(ds).test_input[users[args.user]]      # every item but the test item
    source = item_titles_file(tcfg.dataset, tcfg.data_dir)
    labels = item_labels(ds, item_titles(tcfg.dataset, tcfg.data_dir))
    out = args.out or os.path.join(args.run, "attention")
    path = os.path.join(out, f"user_{re.sub(r'[^A-Za-z0-9_.-]', '_', args.user)}.png")
    (A, ids), = sequence_attention(model, [history], k=args.last)
    import matplotlib.pyplot as plt
    plt.close(write_user_attention(
        model, history, labels, path, k=args.last,
        title=f"User {args.user}: attention over the last {len(ids)} positions of the test input"))
    print(f"user {args.user}: {len(history)} items before the test item; the map's positions "
          f"(queries = rows, keys = columns):")
    for pos, i in enumerate(ids.tolist()):
        print(f"  {pos:2d}  {labels[i]}")
    print("\nwhere the [MASK] query (the prediction) looks, per layer and head:")
    print("\n".join("  " + line for line in mask_row_summary(A, ids, labels)))
    print(f"\nwrote {path} (labels: " + (f"titles from {source})" if source else
                                          "raw item ids: no item file beside the data)"))
    return 0


# The demo's settings: small batches give enough steps on 2,000 users; lr 1e-3 (3e-3 stalls
# on the unigram plateau on this data); one BLAS thread is as fast for these small matrices
# and much faster when the cores are shared.
DEMO = dict(dataset="synthetic", epochs=12, hidden=64, layers=2, heads=2, lr=1e-3, warmup=20,
            batch_size=64, threads=1)


def cmd_demo(args) -> int:
    from .analysis import collect_attention, learned_enough, write_attention_report
    from .data import leave_one_out
    from .plotting import plot_training_curve
    from .evaluate import popularity_metrics
    from .runs import load_run, read_json
    from .settings import TrainConfig, dataset_of
    from .train import train
    tcfg = TrainConfig(**DEMO, seed=args.seed, progress=not args.no_progress, kernels=args.kernels)
    run_dir = args.run_dir
    out = args.out or run_dir
    for folder in {run_dir, out}:             # before minutes of training, not after
        if os.path.lexists(folder) and not os.path.isdir(folder):
            raise InputError(f"{folder}: exists and is not a folder: choose another "
                             f"{'--run-dir' if folder == run_dir else '--out'}")
    print("Training a small BERT4Rec on the embedded synthetic data (items follow hidden "
          "chains; see minibert4rec.data.synthetic) ...")
    metrics = train(tcfg, run_dir, overwrite=True)   # the demo's own folder: a new demo each time
    if metrics is None:
        return 130
    ds = dataset_of(tcfg.resolved())
    pop = popularity_metrics(ds, seed=args.seed)
    _print_metrics_table({"BERT4Rec": metrics, "popularity baseline": pop})
    model, _, _ = load_run(run_dir)
    avg = collect_attention(model, leave_one_out(ds).test_input, k=10)
    png, js = write_attention_report(avg, out, name="attention", skill=learned_enough(metrics, pop),
                                     title="Demo: average attention, last 10 positions (9 = [MASK])")
    history = read_json(os.path.join(run_dir, "state.json"))["history"]
    import matplotlib.pyplot as plt
    plt.close(plot_training_curve(history, path=os.path.join(out, "training_curve.png")))
    print(f"\nwrote {png}, {js} and {os.path.join(out, 'training_curve.png')}; "
          f"checkpoint in {run_dir}")
    return 0


def cmd_download(args) -> int:
    from .download import DATASETS, download
    if args.name not in DATASETS:
        raise InputError(f"unknown dataset {args.name!r}: choose one of {', '.join(DATASETS)}")
    path = download(args.name, args.data_dir, url=args.url, progress=not args.no_progress)
    print(f"{args.name}: {path} (checksum verified)")
    return 0


def cmd_bench(args) -> int:
    from . import bench                   # (NumPy and the model: loaded for this command only)
    if args.config not in bench.CONFIGS:
        raise InputError(f"unknown benchmark configuration {args.config!r}: "
                         f"choose one of {', '.join(bench.CONFIGS)}")
    return bench.command(args)


def cmd_figures(args) -> int:
    from .figures import run_figures, scaling_figure, seeds_figure, static_figures
    paths = static_figures(args.out)
    if args.run:
        command = "python -m minibert4rec " + " ".join(args.argv)
        paths += run_figures(args.run, args.causal_run, args.out, args.data_dir, args.last, command)
    if args.seed_runs:
        paths += seeds_figure(args.seed_runs, args.out, "python -m minibert4rec " + " ".join(args.argv))
    if not args.no_bench:
        paths += scaling_figure(args.out, steps=args.bench_steps)
    print("wrote:\n  " + "\n  ".join(map(str, paths)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m minibert4rec",
                                 description="BERT4Rec from scratch in NumPy.")
    ap.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("gradcheck", help="finite-difference check of every layer and the model",
                       description="Check every hand-written backward against centred finite "
                                   "differences (float64, random upstream gradient); exit 1 if any fails.")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list of {component, tensor, max_rel_error, passed, tol}")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--kernels", choices=("reference", "fast"), default="reference",
                   help="check the plain layers (default) or, for the training loss and the "
                        "whole model, the fast path's fused output head")
    p.set_defaults(func=cmd_gradcheck)

    p = sub.add_parser("train", help="train BERT4Rec on a dataset",
                       description="Train BERT4Rec with the cloze task; writes RUN_DIR with the "
                                   "checkpoint, config.json and metrics.json (test split).")
    p.add_argument("--dataset", default=None,
                   help="synthetic | beauty | ml-1m | ml-100k | PATH to a data file (default synthetic)")
    p.add_argument("--data-dir", help="where datasets live (default: $MINIBERT4REC_DATA, "
                                      "else a per-user cache directory)")
    p.add_argument("--epochs", type=int, help="total number of epochs (default: the dataset "
                                              "preset's, 20 for synthetic data and files); with "
                                              "--resume, training continues up to it")
    p.add_argument("--minutes", type=float, help="stop at this time budget (resumable)")
    p.add_argument("--decay-epochs", type=int,
                   help="epoch at which the linearly decaying learning rate reaches 0 "
                        "(default: --epochs); fix it to resume a run bit-identically to a longer one")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    p.add_argument("--batch-size", type=int, help="sequences per batch (default 256)")
    p.add_argument("--hidden", type=int, help="model width D (default 64)")
    p.add_argument("--layers", type=int, help="encoder layers L (default 2)")
    p.add_argument("--heads", type=int, help="attention heads H (default 2)")
    p.add_argument("--max-len", type=int, help="maximum sequence length N (default: dataset preset)")
    p.add_argument("--mask-ratio", type=float, help="cloze mask ratio (default: dataset preset)")
    p.add_argument("--sliding-step", type=int, metavar="S",
                   help="distance between the starts of the windows cut from a sequence longer "
                        "than N (default: dataset preset; 5 for beauty, N / 2 for MovieLens)")
    p.add_argument("--cloze-copies", type=int, metavar="K",
                   help="cloze instances per window per epoch, each with its own mask, beside "
                        "the one mask-last instance (default: dataset preset; 10 for beauty, "
                        "ml-1m and ml-100k as the authors' dupe_factor, 1 for synthetic and files)")
    p.add_argument("--dropout", type=float, help="hidden dropout (default: dataset preset)")
    p.add_argument("--attention-dropout", type=float, help="dropout on attention weights")
    p.add_argument("--position", choices=("learned", "sinusoidal", "none"),
                   help="position encoding (default learned)")
    p.add_argument("--attention", choices=("bidirectional", "causal"),
                   help="bidirectional (BERT4Rec) or causal (SASRec-style) attention")
    p.add_argument("--gelu", choices=("erf", "tanh"), help="GELU form (default erf)")
    p.add_argument("--warmup", type=int, help="warm-up steps (default 100)")
    p.add_argument("--min-interactions", type=int, help="drop users with fewer items (default 3)")
    p.add_argument("--track-test", action="store_true", default=None,
                   help="also evaluate the test split after every epoch (for learning curves)")
    p.add_argument("--holdout-validation", action="store_true", default=None,
                   help="never train on the validation item (the authors do, which makes "
                        "validation metrics optimistic)")
    p.add_argument("--negatives-seed", type=int_at_least(0), metavar="S",
                   help="seed of the test split's sampled negatives (default: --seed); give the "
                        "same S to runs of different seeds to score them on the same candidates")
    p.add_argument("--negatives", dest="n_negatives", type=int, metavar="N",
                   help="sampled negatives per user in the sampled protocol (default 100, as the "
                        "paper); small data sets need fewer")
    p.add_argument("--threads", type=int, help="BLAS threads (default: NumPy's); 1 is faster "
                                               "when other work shares the cores")
    p.add_argument("--kernels", choices=("fast", "reference"), default="fast",
                   help="fast (default): the fused output head and the fast path's thread and "
                        "memory settings; reference: the plain layers (same numbers, slower)")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/DATASET)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last checkpoint, with its own "
                        "settings; takes only --epochs, --threads, --kernels (default: the "
                        "run's), --minutes, --data-dir, --no-progress")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (without it, a used folder is refused)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train, parser=p)

    p = sub.add_parser("evaluate", help="test metrics of a trained run",
                       description="Evaluate a run's best weights on the test split.")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--protocol", choices=("sampled", "full", "both"), default="both")
    p.add_argument("--data-dir", help="where the run's dataset lives")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--save", action="store_true",
                   help="also write RUN_DIR/metrics.json (e.g. after a run stopped by Ctrl-C)")
    p.add_argument("--negatives-seed", type=int_at_least(0), metavar="S",
                   help="seed of the sampled protocol's negatives (default: the run's "
                        "--negatives-seed, else its --seed); "
                        "to compare runs of different seeds on the same negatives")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("recommend", help="top-k next items for a history",
                       description="Recommend the next items after a history of item ids "
                                   "(original ids, oldest first).")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--items", nargs="+", required=True, metavar="ID")
    p.add_argument("--k", type=int_at_least(1), default=10, help="how many items (default 10)")
    p.add_argument("--include-seen", action="store_true",
                   help="allow items already in the history")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("attention", help="the paper's Figure 2 for a trained run",
                       description="Average attention over the test users' last positions, "
                                   "per layer and head (PNG), and the paper's four observations "
                                   "measured (attention_stats.json); they are judged only if the "
                                   "model beats the popularity baseline (minibert4rec.analysis."
                                   "learned_enough), else 'model not trained enough to judge'. "
                                   "With --user: one user's map instead, labelled with item "
                                   "titles when the data has an item file (e.g. ml-100k.item).")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--out", metavar="DIR", help="output folder (default RUN_DIR/attention)")
    p.add_argument("--last", type=int_at_least(2), default=10, help="window of last positions (default 10)")
    p.add_argument("--causal-run", metavar="RUN_DIR",
                   help="a causal model trained the same way, for observation (d)")
    p.add_argument("--data-dir", help="where the run's dataset lives")
    p.add_argument("--user", metavar="ID",
                   help="draw this user's own map (original user id), every layer and head, "
                        "ticks = item titles; writes OUT/user_ID.png")
    p.set_defaults(func=cmd_attention)

    p = sub.add_parser("demo", help="train on the embedded synthetic data, no download",
                       description="The main job on the embedded default: train a small "
                                   "BERT4Rec on synthetic data with planted structure, print its "
                                   "metrics beside the popularity baseline, write attention "
                                   "heat-maps.")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where the PNGs go (default: the run directory)")
    p.add_argument("--kernels", choices=("fast", "reference"), default="fast",
                   help="fast (default) or reference kernels (same numbers up to rounding)")
    p.add_argument("--seed", type=int_at_least(0), default=0)
    p.add_argument("--run-dir", default=os.path.join("runs", "demo"),
                   help="checkpoint directory (default runs/demo)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("download", help="download a dataset (checksummed)",
                       description="Fetch a dataset from its public source, verify its sha256, "
                                   "write it atomically and unpack it into the data directory "
                                   "(--data-dir, else $MINIBERT4REC_DATA, else a per-user cache).")
    p.add_argument("name", help="beauty | ml-1m | ml-100k")
    p.add_argument("--data-dir")
    p.add_argument("--url", help="another address for the same file (a mirror); the checksum "
                                 "must still match")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("figures", help="regenerate every figure in figures/",
                       description="Regenerate the figures the README shows: static ones "
                                   "(encodings, masks, GELU), the trained run's (Figure 2, "
                                   "bidirectional vs causal, training curve) and the benchmark's "
                                   "scaling plot.")
    p.add_argument("--run", metavar="RUN_DIR", help="trained BERT4Rec run (e.g. runs/beauty)")
    p.add_argument("--causal-run", metavar="RUN_DIR", help="causal model trained the same way")
    p.add_argument("--seed-runs", nargs="+", metavar="RUN_DIR",
                   help="runs of one setting with different seeds, trained with --track-test and "
                        "one --negatives-seed: their curves and spread (DATASET/seeds_curves.png)")
    p.add_argument("--out", default="figures", metavar="DIR")
    p.add_argument("--last", type=int_at_least(2), default=10)
    p.add_argument("--data-dir")
    p.add_argument("--no-bench", action="store_true", help="skip the (slow) scaling benchmark")
    p.add_argument("--bench-steps", type=int_at_least(1), default=5)
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("bench", help="where a training step spends its time",
                       description="Time training steps on synthetic batches of a configuration's "
                                   "shape: throughput, per-component forward/backward times, "
                                   "FLOPs against the measured matmul peak, peak memory.")
    p.add_argument("--config", default="beauty",
                   help="the shape to benchmark: beauty (default), ml-1m or tiny (bench.CONFIGS)")
    p.add_argument("--steps", type=int_at_least(1), default=20, help="timed training steps (default 20)")
    p.add_argument("--warmup", type=int_at_least(0), default=3, help="untimed steps first (default 3)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the synthetic data (default 0)")
    p.add_argument("--threads", type=int_at_least(1), help="limit OpenBLAS to this many threads")
    p.add_argument("--cloze-copies", type=int_at_least(1), metavar="K",
                   help="cloze instances per window beside the mask-last one in the batches "
                        "(default: the configuration's, as training: 10 for beauty and ml-1m; "
                        "1 gives one cloze and one mask-last instance per window)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--malloc-default", action="store_true",
                   help="leave malloc returning freed memory to the system (to measure "
                        "what keeping it buys; see fast.threads.keep_freed_memory)")
    p.add_argument("--kernels", choices=("fast", "reference"), default="fast",
                   help="the path timed first (default fast); the table of tricks shows both")
    p.add_argument("--no-compare", action="store_true",
                   help="skip the table that times the reference path and each trick")
    p.set_defaults(func=cmd_bench)
    return ap


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # The fast head wants OpenBLAS's idle threads to stop spinning quickly, which
    # OpenBLAS reads only when NumPy loads it: decide before anything imports NumPy.
    from .fast import command_uses_fast_kernels      # (imports no NumPy)
    if command_uses_fast_kernels(argv):
        from .fast.threads import prefer_short_blas_spin
        prefer_short_blas_spin()
    from .errors import TrainingStopped
    ap = build_parser()
    args = ap.parse_args(argv)
    args.argv = argv                      # the command as typed (recorded by `figures`)
    try:
        return args.func(args)
    except (InputError, FileNotFoundError, TrainingStopped) as e:
        if args.debug:
            raise
        if isinstance(e, FileNotFoundError) and e.filename:
            msg = f"{e.filename}: {e.strerror or 'file not found'}"
        else:
            msg = str(e)
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:          # e.g. `... | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0
    except OSError as e:             # an output path that is a file, a read-only folder, ...
        if args.debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except MemoryError:
        if args.debug:
            raise
        print("error: out of memory: choose a smaller model, batch (--batch-size) or data set",
              file=sys.stderr)
        return 2
