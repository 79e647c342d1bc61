"""Every bad input gets a one-line message (file and line for data files), never a traceback.

Each case runs the command line in-process (``cli.main``) and checks the exit
status 2 and the message; the library raises the same message as
``InputError`` (a ``ValueError``) or ``FileNotFoundError``.

    bad input                                   message (abridged)
    missing data file                           missing.txt: data file not found
    empty file                                  empty.txt: no interactions
    line with too few fields                    short.txt:3: expected 2 fields ...
    non-integer id                              nonint.txt:2: item id 'x' is not a valid integer
    negative id                                 neg.txt:2: item id -2 is negative
    wrong delimiter ('::' file with commas)     ratings.dat:1: expected 4 fields separated by '::' ...
    header without the needed columns           nocol.inter:1: header columns [...] lack a user column ...
    nobody left after the min-interactions cut  few.txt: no user has at least 3 interactions
    unknown dataset name                        unknown dataset 'nosuch'
    D not divisible by H                        hidden size D=30 is not divisible by heads H=4
    N < 2                                       max_len N must be at least 2
    dropout outside [0, 1)                      hidden_dropout must be in [0, 1)
    negative learning rate                      lr must be > 0
    zero batch size                             batch size must be >= 1
    incompatible checkpoint configuration       ... incompatible checkpoint
    unsupported format version                  checkpoint format version 99 is not supported
    truncated / corrupt checkpoint              truncated or corrupt checkpoint file
    checkpoint that needs pickle                refusing to load: the file contains Python objects
    a text file as checkpoint                   checkpoint.npz: not a checkpoint file ... starts with b'he'
    (the run folder's other hostile cases: tests/test_hardening.py)
    negative seed, zero threads                 seed must be >= 0 (train); argument --seed: ... (others)
    unknown item id in recommend                unknown item id(s) 99999
"""
import json
import shutil

import numpy as np
import pytest

from minibert4rec import cli
from minibert4rec.data import load_dataset
from minibert4rec.errors import InputError
from minibert4rec.settings import TrainConfig
from minibert4rec.train import train

FILES = {
    "empty.txt": "",
    "short.txt": "1 1\n1 2\n3\n",
    "nonint.txt": "1 1\n1 x\n",
    "neg.txt": "1 1\n1 -2\n",
    "ratings.dat": "1,1,5,10\n1,2,5,11\n",
    "nocol.inter": "user_id\tfoo\n1\t2\n",
    "few.txt": "1 1\n1 2\n2 3\n",
}

DATA_CASES = [
    ("missing.txt", r"missing\.txt: data file not found"),
    ("empty.txt", r"empty\.txt: no interactions"),
    ("short.txt", r"short\.txt:3: expected 2 fields"),
    ("nonint.txt", r"nonint\.txt:2: item id 'x' is not a valid integer"),
    ("neg.txt", r"neg\.txt:2: item id -2 is negative"),
    ("ratings.dat", r"ratings\.dat:1: expected 4 fields separated by '::'"),
    ("nocol.inter", r"nocol\.inter:1: header columns .* lack a user column"),
    ("few.txt", r"few\.txt: no user has at least 3 interactions"),
    ("nosuch", r"unknown dataset 'nosuch'"),
]


@pytest.fixture
def files(tmp_path, monkeypatch):
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line_error(code, err, pattern):
    import re
    assert code == 2
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert re.search(pattern, err), err


@pytest.mark.parametrize("name,pattern", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_file(files, capsys, name, pattern):
    code, err = run_cli(capsys, "train", "--dataset", name, "--epochs", "1", "--no-progress")
    assert_one_line_error(code, err, pattern)
    with pytest.raises((InputError, FileNotFoundError), match=pattern.split(": ", 1)[-1]):
        load_dataset(name)


HYPER_CASES = [
    (["--hidden", "30", "--heads", "4"], r"D=30 is not divisible by heads H=4"),
    (["--max-len", "1"], r"max_len N must be at least 2"),
    (["--dropout", "1.0"], r"hidden_dropout must be in \[0, 1\)"),
    (["--dropout", "-0.1"], r"hidden_dropout must be in \[0, 1\)"),
    (["--lr", "-1"], r"lr must be > 0"),
    (["--batch-size", "0"], r"batch size must be >= 1"),
    (["--epochs", "0"], r"epochs must be >= 1"),
    (["--seed", "-1"], r"seed must be >= 0, got -1"),
    (["--threads", "0"], r"threads must be >= 1"),
    (["--warmup", "-5"], r"warm-up steps must be >= 0, got -5"),
]


@pytest.mark.parametrize("argv,pattern", HYPER_CASES, ids=[" ".join(c[0]) for c in HYPER_CASES])
def test_bad_hyper_parameters(tmp_path, capsys, argv, pattern):
    code, err = run_cli(capsys, "train", "--out", str(tmp_path / "r"), "--no-progress", *argv)
    assert_one_line_error(code, err, pattern)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    train(TrainConfig(dataset="synthetic", epochs=1, hidden=16, layers=1, max_len=10,
                      synthetic_users=300, progress=False), d, log=lambda *a: None)
    return d


def copy_run(run_dir, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(run_dir, d)
    return d


def test_incompatible_checkpoint(run_dir, tmp_path, capsys):
    d = copy_run(run_dir, tmp_path)
    conf = json.loads((d / "config.json").read_text())
    conf["model"]["hidden"] = 32
    (d / "config.json").write_text(json.dumps(conf))
    assert_one_line_error(*run_cli(capsys, "evaluate", "--run", str(d)), r"incompatible checkpoint")


def test_unsupported_format_version(run_dir, tmp_path, capsys):
    d = copy_run(run_dir, tmp_path)
    conf = json.loads((d / "config.json").read_text())
    conf["format_version"] = 99
    (d / "config.json").write_text(json.dumps(conf))
    assert_one_line_error(*run_cli(capsys, "evaluate", "--run", str(d)),
                          r"checkpoint format version 99 is not supported")


def test_truncated_checkpoint(run_dir, tmp_path, capsys):
    d = copy_run(run_dir, tmp_path)
    data = (d / "checkpoint.npz").read_bytes()
    (d / "checkpoint.npz").write_bytes(data[: len(data) // 3])
    assert_one_line_error(*run_cli(capsys, "evaluate", "--run", str(d)),
                          r"truncated or corrupt checkpoint file")


def test_checkpoint_needing_pickle_is_refused(run_dir, tmp_path, capsys):
    d = copy_run(run_dir, tmp_path)
    arrays = dict(np.load(d / "checkpoint.npz"))
    arrays["best/item_emb"] = np.array([{"evil": "object"}], dtype=object)
    np.savez(d / "checkpoint.npz", **arrays)
    assert_one_line_error(*run_cli(capsys, "evaluate", "--run", str(d)),
                          r"refusing to load: the file contains Python objects")


def test_a_file_that_is_no_checkpoint_at_all(run_dir, tmp_path, capsys):
    d = copy_run(run_dir, tmp_path)
    (d / "checkpoint.npz").write_text("hello")
    assert_one_line_error(*run_cli(capsys, "evaluate", "--run", str(d)),
                          r"checkpoint\.npz: not a checkpoint file .* starts with b'he'")


@pytest.mark.parametrize("argv, message", [
    (["demo", "--seed", "-1"], r"argument --seed: must be an integer >= 0, got -1"),
    (["recommend", "--run", "r", "--items", "1", "--k", "0"], r"argument --k: must be an integer >= 1"),
    (["bench", "--threads", "-1"], r"argument --threads: must be an integer >= 1, got -1"),
    (["gradcheck", "--seed", "x"], r"argument --seed: must be an integer >= 0, got 'x'"),
    (["evaluate", "--run", "r", "--negatives-seed", "-1"], r"argument --negatives-seed: must be"),
])
def test_bad_integer_options_end_with_one_line_and_status_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("python -m minibert4rec") and __import__("re").search(message, err[-1])
    assert not any("Traceback" in line for line in err)


def test_missing_run_directory(tmp_path, capsys):
    assert_one_line_error(*run_cli(capsys, "evaluate", "--run", str(tmp_path / "nope")),
                          r"run directory not found")


def test_unknown_item_in_recommend(run_dir, capsys):
    assert_one_line_error(*run_cli(capsys, "recommend", "--run", str(run_dir), "--items", "1", "99999"),
                          r"unknown item id\(s\) 99999")


def test_recommend_works_for_known_items(run_dir, capsys):
    assert cli.main(["recommend", "--run", str(run_dir), "--items", "1", "2", "--k", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("score") == 3


def test_unknown_download_name(capsys):
    assert_one_line_error(*run_cli(capsys, "download", "nosuch"), r"unknown dataset 'nosuch'")


def test_debug_flag_shows_the_traceback(files):
    with pytest.raises(InputError):
        cli.main(["--debug", "train", "--dataset", "short.txt", "--epochs", "1"])
