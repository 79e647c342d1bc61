"""Several seeds of one setting: the same test negatives, the paper's row, mean and spread."""
import json

import numpy as np
import pytest

from minibert4rec.cli import main
from minibert4rec.errors import InputError
from minibert4rec.evaluate import PAPER_ROWS, first_reaching, spread
from minibert4rec.figures import seeds_figure
from minibert4rec import evaluate as ev
from minibert4rec.runs import load_run
from minibert4rec.settings import PRESETS, TrainConfig, dataset_of
from minibert4rec.train import train

TINY = dict(dataset="synthetic", hidden=16, heads=2, layers=1, batch_size=128, max_len=12,
            progress=False, lr=3e-3, warmup=10, synthetic_users=400, epochs=2)
quiet = lambda *a, **k: None  # noqa: E731


def test_first_reaching_needs_every_target_metric_at_once():
    target = {"HR@10": 0.30, "NDCG@10": 0.18}
    history = [{"epoch": 1, "minutes": 5.0, "test": {"HR@10": 0.31, "NDCG@10": 0.17}},  # one of two
               {"epoch": 2, "minutes": 9.0},                                          # no test block
               {"epoch": 3, "minutes": 14.0, "test": {"HR@10": 0.30, "NDCG@10": 0.18}},  # both, equal
               {"epoch": 4, "minutes": 19.0, "test": {"HR@10": 0.33, "NDCG@10": 0.20}}]
    assert first_reaching(history, target)["epoch"] == 3
    assert first_reaching(history[:2], target) is None
    assert first_reaching(history, target, split="valid") is None
    assert first_reaching(history, {"MRR": 0.1}) is None                   # metric never measured


def test_spread_is_mean_sample_std_min_max_per_metric():
    runs = [{"HR@10": 0.30, "NDCG@10": 0.18}, {"HR@10": 0.32, "NDCG@10": 0.17},
            {"HR@10": 0.31, "NDCG@10": 0.19, "MRR": 0.2}]                   # MRR not in every run
    s = spread(runs)
    hr = np.array([0.30, 0.32, 0.31])
    assert set(s["mean"]) == {"HR@10", "NDCG@10"}
    assert s["mean"]["HR@10"] == pytest.approx(hr.mean())
    assert s["std"]["HR@10"] == pytest.approx(hr.std(ddof=1))
    assert (s["min"]["NDCG@10"], s["max"]["NDCG@10"]) == (0.17, 0.19)
    assert spread(runs[:1])["std"]["HR@10"] == 0.0
    with pytest.raises(InputError):
        spread([])


def test_every_dataset_preset_sets_its_epochs_and_a_flag_overrides_it():
    for name, preset in PRESETS.items():
        assert TrainConfig(dataset=name).resolved().epochs == preset["epochs"], name
    assert TrainConfig(dataset="beauty", epochs=3).resolved().epochs == 3
    assert TrainConfig(dataset="beauty").resolved().decay_epochs == PRESETS["beauty"]["epochs"]
    assert set(PAPER_ROWS) <= set(PRESETS)


@pytest.fixture(scope="module")
def seed_runs(tmp_path_factory):
    """Two seeds scored on seed 0's negatives, and a third on its own (seed 2's)."""
    root = tmp_path_factory.mktemp("seeds")
    dirs = []
    for seed, neg in ((0, 0), (1, 0), (2, None)):
        d = root / f"s{seed}"
        train(TrainConfig(seed=seed, negatives_seed=neg, track_test=True, **TINY), d, log=quiet)
        dirs.append(str(d))
    return root, dirs


def test_negatives_seed_scores_the_test_split_on_that_seeds_negatives(seed_runs):
    _, (s0, s1, s2) = seed_runs
    model, tcfg, _ = load_run(s1)
    assert (tcfg.seed, tcfg.test_seed) == (1, 0)
    ds = dataset_of(tcfg)
    saved = json.load(open(f"{s1}/metrics.json"))["sampled"]
    on_seed0 = ev.test_metrics(model, ds, protocol="sampled", seed=0)["sampled"]
    on_seed1 = ev.test_metrics(model, ds, protocol="sampled", seed=1)["sampled"]
    assert saved == on_seed0 and on_seed0 != on_seed1
    # the tracked curve of the kept epoch is scored on the same negatives as metrics.json
    state = json.load(open(f"{s1}/state.json"))
    kept = state["history"][state["best_epoch"] - 1]["test"]
    assert kept == saved
    assert load_run(s2)[1].test_seed == 2                     # default: the run's own seed


def test_evaluate_defaults_to_the_runs_negatives_seed(seed_runs, capsys):
    _, (_, s1, _) = seed_runs
    assert main(["evaluate", "--run", s1, "--protocol", "sampled", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["sampled"] == json.load(open(f"{s1}/metrics.json"))["sampled"]


def test_seeds_figure_writes_curves_and_the_spread(seed_runs, tmp_path):
    _, (s0, s1, _) = seed_runs
    paths = seeds_figure([s0, s1], str(tmp_path), command="cmd")
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["seeds_curves.png", "seeds.json"]
    summary = json.load(open(tmp_path / "synthetic" / "seeds.json"))
    assert [r["seed"] for r in summary["runs"]] == [0, 1]
    assert summary["negatives_seed"] == 0 and summary["paper_row"] is None
    tests = [json.load(open(f"{d}/metrics.json"))["sampled"] for d in (s0, s1)]
    assert summary["mean"]["NDCG@10"] == pytest.approx((tests[0]["NDCG@10"] + tests[1]["NDCG@10"]) / 2)
    assert all(r["reaches_paper_row"] is None for r in summary["runs"])   # no paper row here
    fulls = [json.load(open(f"{d}/metrics.json"))["full"] for d in (s0, s1)]
    assert [r["test_full"] for r in summary["runs"]] == fulls
    assert summary["full"]["max"]["HR@10"] == max(f["HR@10"] for f in fulls)
    history = json.load(open(f"{s1}/state.json"))["history"]
    assert summary["runs"][1]["curve"] == [{"epoch": h["epoch"], "minutes": h["minutes"],
                                            "test": h["test"]} for h in history]


def test_seeds_figure_refuses_runs_on_other_negatives_or_without_curves(seed_runs, tmp_path):
    root, (s0, _, s2) = seed_runs
    with pytest.raises(InputError, match="--negatives-seed"):
        seeds_figure([s0, s2], str(tmp_path))
    plain = root / "no-track"
    train(TrainConfig(seed=0, **{**TINY, "epochs": 1}), plain, log=quiet)
    with pytest.raises(InputError, match="--track-test"):
        seeds_figure([s0, str(plain)], str(tmp_path))
    (plain / "metrics.json").write_text('{"full": {}}')
    with pytest.raises(InputError, match="no sampled-protocol metrics"):
        seeds_figure([str(plain)], str(tmp_path))


def test_figures_command_takes_seed_runs(seed_runs, tmp_path, capsys):
    _, (s0, s1, _) = seed_runs
    assert main(["figures", "--no-bench", "--out", str(tmp_path), "--seed-runs", s0, s1]) == 0
    assert (tmp_path / "synthetic" / "seeds_curves.png").stat().st_size > 0
    assert "seeds.json" in capsys.readouterr().out


def test_the_presets_doc_lists_every_preset_as_the_code_has_it():
    """docs/presets.md's table is what `train --dataset NAME` trains: it must follow PRESETS."""
    import pathlib
    from minibert4rec.settings import DEFAULT_PRESET
    doc = (pathlib.Path(__file__).parents[1] / "docs" / "presets.md").read_text()
    rows = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 8 and cells[1].isdigit():
            rows[cells[0].split()[0].strip("`")] = cells[1:]
    rows["file"] = rows.pop("a")                                       # "a file given by path"
    for name, preset in {**PRESETS, "file": DEFAULT_PRESET}.items():
        n, ratio, preds, step, dropout, copies, epochs = rows[name]
        hidden, attention = (float(x) for x in dropout.split("/"))
        assert (int(n), float(ratio), int(preds), int(step), hidden, attention, int(copies),
                int(epochs)) == tuple(preset[k] for k in (
                    "max_len", "mask_ratio", "max_predictions", "sliding_step", "hidden_dropout",
                    "attention_dropout", "cloze_copies", "epochs")), name


def test_the_docs_and_readme_quote_the_committed_seed_summary():
    """The three-seed mean in docs/beauty.md, docs/presets.md and the README is the one
    `figures --seed-runs` wrote to figures/beauty/seeds.json (rounded to 4 places): regenerate
    them together."""
    import pathlib
    root = pathlib.Path(__file__).parents[1]
    summary = json.loads((root / "figures" / "beauty" / "seeds.json").read_text())
    assert len(summary["runs"]) == 3 and summary["negatives_seed"] is not None
    mean = {k: f"{v:.4f}" for k, v in summary["mean"].items()}
    doc = (root / "docs" / "beauty.md").read_text()
    doc_rows = [line for line in doc.splitlines() if line.startswith("| mean |")]
    assert len(doc_rows) == 1
    cells = [c.strip() for c in doc_rows[0].strip("|").split("|")]
    assert cells[1:7] == [mean[k] for k in ("HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR")]
    assert cells[7:10] == [f"{summary['full']['mean'][k]:.4f}" for k in ("HR@10", "NDCG@10", "MRR")]
    readme = " ".join((root / "README.md").read_text().split())
    assert f"HR@10 {mean['HR@10']}, NDCG@10 {mean['NDCG@10']}" in readme
    presets = " ".join((root / "docs" / "presets.md").read_text().split())
    assert f"HR@10 {mean['HR@10']} and NDCG@10 {mean['NDCG@10']}" in presets
