"""The README's third command, `python -m minibert4rec demo`, as a user runs it.

It must learn (beat the popularity baseline by a clear margin on the test split;
the exact digits depend on the machine and its BLAS, so they are not checked)
and write only into its run folder, ``runs/demo`` under the working directory,
which git ignores: following the README leaves the checkout clean.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARGIN = 0.2        # HR@10 and NDCG@10 above popularity's; the demo reaches ~0.5 above


def test_demo_beats_popularity_clearly_and_writes_only_its_run_folder(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    out = subprocess.run([sys.executable, "-m", "minibert4rec", "demo", "--no-progress"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    run = tmp_path / "runs" / "demo"
    for name in ("attention.png", "training_curve.png", "metrics.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    model = metrics["sampled"]
    # the first table printed is the sampled protocol's: "popularity baseline  HR@1 HR@5 HR@10 NDCG@5 NDCG@10 MRR"
    popularity = next(line.split()[2:] for line in out.stdout.splitlines()
                      if line.startswith("popularity baseline"))
    assert model["HR@10"] >= float(popularity[2]) + MARGIN, (model, popularity)
    assert model["NDCG@10"] >= float(popularity[4]) + MARGIN, (model, popularity)


def test_git_ignores_the_run_folders():
    assert "/runs/" in (ROOT / ".gitignore").read_text().split()
