"""Training end to end on the synthetic data: it learns, resumes exactly, saves safely."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minibert4rec.errors import InputError
from minibert4rec.runs import load_run, read_arrays, write_arrays
from minibert4rec.settings import PRESETS, TrainConfig, dataset_of
from minibert4rec.train import train

TINY = dict(dataset="synthetic", hidden=16, heads=2, layers=1, batch_size=128, max_len=12,
            progress=False, lr=3e-3, warmup=10, decay_epochs=3, synthetic_users=600)
quiet = lambda *a, **k: None  # noqa: E731


def weights(run_dir, name="last.npz"):
    """The weights of the last checkpoint ("last.npz") or the best ones ("weights.npz")."""
    return load_run(run_dir, "last" if name == "last.npz" else "best")[0].params


@pytest.fixture(scope="module")
def run3(tmp_path_factory):
    d = tmp_path_factory.mktemp("run3")
    metrics = train(TrainConfig(epochs=3, **TINY), d, log=quiet)
    return d, metrics


def test_run_directory_and_metrics_json(run3):
    d, metrics = run3
    assert sorted(os.listdir(d)) == ["checkpoint.npz", "config.json", "items.txt", "metrics.json",
                                     "state.json", "weights.npz"]
    saved = json.loads((d / "metrics.json").read_text())
    keys = {"HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR"}
    assert set(saved) == {"sampled", "full"} and set(saved["sampled"]) == set(saved["full"]) == keys
    assert saved == metrics
    state = json.loads((d / "state.json").read_text())
    assert state["epoch"] == 3 and len(state["history"]) == 3
    assert state["history"][-1]["loss"] < state["history"][0]["loss"]
    for h in state["history"]:       # each epoch: its step, minutes, loss, validation, eval time
        assert {"epoch", "step", "minutes", "loss", "valid", "eval_minutes"} <= set(h)
        assert h["eval_minutes"] >= 0


def test_resume_is_bit_identical(run3, tmp_path):
    d3, metrics3 = run3
    d = tmp_path / "resumed"
    train(TrainConfig(epochs=1, **TINY), d, log=quiet)
    metrics = train(TrainConfig(epochs=3, **TINY), d, resume=True, log=quiet)
    a, b = weights(d3), weights(d)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert all(np.array_equal(x, y) for x, y in zip(weights(d3, "weights.npz").values(),
                                                     weights(d, "weights.npz").values()))
    assert metrics == metrics3


def a_clock_one_second_per_reading():
    """train's clock, made slow: every reading is one second later, so a budget of 1e-4
    minutes runs out at the first check (after one step) on any machine."""
    import itertools
    import types
    ticks = itertools.count()
    return types.SimpleNamespace(perf_counter=lambda: float(next(ticks)))


def test_resume_from_the_middle_of_an_epoch_is_bit_identical(run3, tmp_path, monkeypatch):
    import minibert4rec.train as train_module
    d3, _ = run3
    d = tmp_path / "mid"
    with monkeypatch.context() as m:
        m.setattr(train_module, "time", a_clock_one_second_per_reading())
        train(TrainConfig(epochs=3, minutes=1e-4, **TINY), d, log=quiet)   # stops after one step
    state = json.loads((d / "state.json").read_text())
    assert state["epoch"] == 0 and state["batch"] == 1
    train(TrainConfig(epochs=3, **TINY), d, resume=True, log=quiet)
    a, b = weights(d3), weights(d)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # the resumed epoch's logged loss is the mean over all its batches, as without the stop
    history = [json.loads((x / "state.json").read_text())["history"] for x in (d3, d)]
    assert [h["loss"] for h in history[0]] == pytest.approx([h["loss"] for h in history[1]], rel=1e-12)


def test_resume_past_the_last_epoch_says_there_is_nothing_to_train(run3, tmp_path):
    import shutil
    d = tmp_path / "done"
    shutil.copytree(run3[0], d)
    said = []
    train(TrainConfig(epochs=2, **TINY), d, resume=True, log=said.append)
    assert any("has trained 3 epochs already, --epochs is 2: nothing to train" in s for s in said)


def test_same_seed_same_metrics_other_seed_differs(run3, tmp_path):
    _, m0 = run3
    m1 = train(TrainConfig(epochs=3, **{**TINY, "seed": 1}), tmp_path / "s1", log=quiet)
    assert m1 != m0


def test_training_beats_popularity_on_synthetic(tmp_path):
    from minibert4rec.evaluate import popularity_metrics
    # 8 epochs at lr 2e-3 (warm-up 30): sampled NDCG@10 0.41-0.45 for seeds 0-4, popularity
    # 0.22. The former 5 epochs at lr 3e-3 (warm-up 10) stayed at the popularity level for
    # some seeds (0.22-0.43): it passed for seed 0 by luck of the draw.
    cfg = TrainConfig(epochs=8, **{**TINY, "hidden": 32, "layers": 1, "synthetic_users": 1000,
                                   "decay_epochs": 8, "batch_size": 64, "max_len": 20, "lr": 2e-3,
                                   "warmup": 30, "threads": 1, "holdout_validation": True})
    m = train(cfg, tmp_path / "learn", log=quiet)
    pop = popularity_metrics(dataset_of(cfg))
    assert m["sampled"]["NDCG@10"] > pop["sampled"]["NDCG@10"] + 0.1
    assert m["full"]["HR@10"] > pop["full"]["HR@10"] + 0.1


def test_checkpoint_refuses_pickle(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="pickle"):
        read_arrays(path)


def test_truncated_checkpoint_is_reported(run3, tmp_path):
    d3, _ = run3
    data = (d3 / "weights.npz").read_bytes()
    bad = tmp_path / "run"
    bad.mkdir()
    for f in ("config.json", "items.txt"):
        (bad / f).write_bytes((d3 / f).read_bytes())
    (bad / "weights.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_run(bad)


def test_incompatible_checkpoint_is_reported(run3, tmp_path):
    d3, _ = run3
    bad = tmp_path / "run"
    bad.mkdir()
    conf = json.loads((d3 / "config.json").read_text())
    conf["model"]["hidden"] = 32
    (bad / "config.json").write_text(json.dumps(conf))
    (bad / "weights.npz").write_bytes((d3 / "weights.npz").read_bytes())
    with pytest.raises(InputError, match="incompatible"):
        load_run(bad)
    conf["format_version"] = 99
    (bad / "config.json").write_text(json.dumps(conf))
    with pytest.raises(InputError, match="format version"):
        load_run(bad)


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "w.npz"
    write_arrays(path, {"a": np.ones(3)})

    class Boom:                          # np.savez fails half-way through the arrays
        def __array__(self, *a, **k):
            raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        write_arrays(path, {"a": np.zeros(3), "b": Boom()})
    assert np.array_equal(read_arrays(path)["a"], np.ones(3))
    assert os.listdir(tmp_path) == ["w.npz"]                 # no temporary file left


def test_ctrl_c_saves_a_resumable_checkpoint(tmp_path):
    d = tmp_path / "int"
    cmd = [sys.executable, "-m", "minibert4rec", "train", "--dataset", "synthetic", "--epochs", "50",
           "--hidden", "16", "--layers", "1", "--max-len", "12", "--no-progress", "--out", str(d)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (d / "state.json").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out                       # as scripts expect of Ctrl-C
    assert "resumable checkpoint" in out and "--resume" in out
    state = json.loads((d / "state.json").read_text())
    assert state["epoch"] >= 1 and state["epoch"] < 50


def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from minibert4rec.model import BERT4Rec
    from minibert4rec.errors import TrainingStopped
    d = tmp_path / "nan"
    cfg = TrainConfig(epochs=2, **TINY)
    train(TrainConfig(epochs=1, **TINY), d, log=quiet)
    good = weights(d)
    real = BERT4Rec.loss_and_grads

    def poisoned(self, *a, **k):
        loss, grads = real(self, *a, **k)
        return float("nan"), grads
    monkeypatch.setattr(BERT4Rec, "loss_and_grads", poisoned)
    with pytest.raises(TrainingStopped, match="loss became nan .* last good checkpoint"):
        train(cfg, d, resume=True, log=quiet)
    after = weights(d)
    assert all(np.array_equal(good[k], after[k]) for k in good)
    assert json.loads((d / "state.json").read_text())["epoch"] == 1


def test_cloze_copies_follow_the_preset_and_old_runs_resume_with_one(tmp_path, monkeypatch):
    # the authors' dupe_factor 10 for their datasets; the demo data keeps 1 + 1 short epochs
    assert TrainConfig(dataset="beauty").resolved().cloze_copies == 10
    assert TrainConfig(dataset="ml-1m").resolved().cloze_copies == 10
    assert TrainConfig(dataset="synthetic").resolved().cloze_copies == 1
    assert TrainConfig(dataset="beauty", cloze_copies=3).resolved().cloze_copies == 3
    with pytest.raises(InputError):
        TrainConfig(dataset="beauty", cloze_copies=0).resolved()
    # a run directory written before the setting existed: resuming keeps 1 copy per epoch
    d = tmp_path / "old"
    train(TrainConfig(epochs=1, **TINY), d, log=quiet)
    conf = json.loads((d / "config.json").read_text())
    del conf["train"]["cloze_copies"]
    (d / "config.json").write_text(json.dumps(conf))
    monkeypatch.setitem(PRESETS["synthetic"], "cloze_copies", 3)     # the preset moved on since
    train(TrainConfig(epochs=2, **TINY), d, resume=True, log=quiet)
    assert json.loads((d / "config.json").read_text())["train"]["cloze_copies"] == 1


def test_evaluate_negatives_seed(run3, capsys):
    # evaluate --negatives-seed: another draw of the 100 sampled negatives, same weights
    from minibert4rec import cli
    d, metrics = run3

    def sampled(*extra):
        assert cli.main(["evaluate", "--run", str(d), "--protocol", "sampled", "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out)["sampled"]

    assert sampled() == sampled("--negatives-seed", "0") == metrics["sampled"]   # the run's seed
    assert sampled("--negatives-seed", "5") != metrics["sampled"]
    assert cli.main(["evaluate", "--run", str(d), "--negatives-seed", "5", "--save"]) == 2
    assert "--negatives-seed" in capsys.readouterr().err


def test_validation_negatives_avoid_every_item_of_the_user_including_the_test_item():
    from minibert4rec import data
    from minibert4rec.train import validation_negatives
    ds = data.synthetic(n_users=300, n_items=60, seed=3)
    split = data.leave_one_out(ds)
    neg = validation_negatives(split, ds.popularity(), 20, seed=0)
    assert neg.shape == (300, 20)
    for u in range(300):
        own = set(split.valid_input[u]) | {split.valid_target[u], split.test_target[u]}
        assert not own & set(neg[u].tolist()), u


def test_evaluate_save_of_one_protocol_keeps_the_other_and_json_has_the_baseline(run3, tmp_path, capsys):
    import shutil
    from minibert4rec import cli
    src, metrics = run3
    d = tmp_path / "copy"
    shutil.copytree(src, d)
    assert cli.main(["evaluate", "--run", str(d), "--protocol", "sampled", "--save", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sampled"] == metrics["sampled"] and "full" not in out
    assert set(out["popularity"]) == {"sampled"} and out["popularity"]["sampled"] != out["sampled"]
    assert json.loads((d / "metrics.json").read_text()) == metrics       # "full" is still there


def test_a_small_data_file_needs_fewer_negatives_and_says_so(tmp_path, capsys):
    from minibert4rec import cli
    rng = np.random.default_rng(0)
    lines = [f"{u} {i}" for u in range(40) for i in rng.choice(30, size=6, replace=False)]
    path = tmp_path / "small.txt"
    path.write_text("\n".join(lines) + "\n")
    common = ["train", "--dataset", str(path), "--epochs", "1", "--no-progress", "--threads", "1",
              "--hidden", "16", "--out", str(tmp_path / "run")]
    assert cli.main(common) == 2
    err = capsys.readouterr().err
    assert "too few items for the sampled protocol's 100 negatives" in err and "--negatives N" in err
    assert cli.main(common + ["--negatives", "10"]) == 0
    assert "true item vs popularity-sampled negatives" in capsys.readouterr().out
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert saved["n_negatives"] == 10
    assert cli.main(["evaluate", "--run", str(tmp_path / "run"), "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"sampled", "full", "popularity"}


def test_a_run_folder_of_an_earlier_version_resumes_bit_identically(run3, tmp_path):
    # before checkpoint.npz: last.npz, optimizer.npz and state.json (plus weights.npz, the best)
    d3, metrics3 = run3
    d = tmp_path / "old"
    train(TrainConfig(epochs=1, **TINY), d, log=quiet)
    with np.load(d / "checkpoint.npz") as z:
        arrays = {n: z[n] for n in z.files}
    part = lambda prefix: {n[len(prefix):]: a for n, a in arrays.items() if n.startswith(prefix)}  # noqa: E731
    write_arrays(d / "last.npz", part("params/"))
    write_arrays(d / "weights.npz", part("best/"))
    write_arrays(d / "optimizer.npz", {n: a for n, a in arrays.items() if n[:2] in ("m/", "v/")})
    (d / "state.json").write_text(arrays["state"].tobytes().decode())
    os.remove(d / "checkpoint.npz")
    assert np.array_equal(weights(d)["item_emb"], arrays["params/item_emb"])    # read as it is
    os.remove(d / "optimizer.npz")
    with pytest.raises(InputError, match=r"incomplete checkpoint of an earlier version "
                                         r"\(last\.npz, state\.json only\)"):
        train(TrainConfig(epochs=3, **TINY), d, resume=True, log=quiet)
    write_arrays(d / "optimizer.npz", {n: a for n, a in arrays.items() if n[:2] in ("m/", "v/")})
    metrics = train(TrainConfig(epochs=3, **TINY), d, resume=True, log=quiet)
    a, b = weights(d3), weights(d)
    assert all(np.array_equal(a[k], b[k]) for k in a) and metrics == metrics3
    assert sorted(os.listdir(d)) == ["checkpoint.npz", "config.json", "items.txt", "metrics.json",
                                     "state.json", "weights.npz"]          # converted, once
