"""The fast path against the reference path: the same numbers, and no leak into the reference.

Bounds: float64 agrees to 1e-12 relative (the fused head sums the same terms in
another order); float32 to 1e-4 relative on the loss and 1e-4 (relative to the
gradient's largest entry) on gradients for the head alone, 2e-4 for a whole
training step (the encoder's float32 rounding adds to it): the reference's
float32 softmax of (M, V) logits and the fused tile sums round differently.
"""
import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minibert4rec import fast
from minibert4rec import model as Mo
from minibert4rec.fast import head as Fh
from minibert4rec.fast import threads as Ft
from minibert4rec.gradcheck import rel_error

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_MODULES = ("layers", "attention", "encoder", "model")


def _close(a, b, rtol):
    """The gradient checker's relative error (scaled by the whole tensor; absolute for a
    tensor below 1e-2, such as attention's key bias, whose true gradient is 0) <= rtol."""
    return rel_error(a, b) <= rtol


def _head_inputs(dtype, scale, M=9, D=8, V=37, seed=0):
    r = np.random.default_rng(seed)
    n = (scale * r.standard_normal((M, D))).astype(dtype)
    E = r.standard_normal((V, D)).astype(dtype)
    b = r.standard_normal(V).astype(dtype)
    t = np.array([3, 3, 5, 0, 36, 3, 7, 7, 1])[:M]              # repeated targets, the last id
    w = np.array([1, 1, 1, 0, 1, 1, 0, 1, 1], dtype=dtype)[:M]  # two zero-weight slots
    return n, E, b, t, w


@pytest.mark.parametrize("tile", [Fh.TILE_ELEMENTS, 12, 1])     # one tile; ragged tiles; 1 column each
@pytest.mark.parametrize("scale", [1.0, 40.0])                   # 40: logits ~ +-300, the max-shift path
def test_fused_head_equals_the_reference_output_loss_in_float64(tile, scale):
    n, E, b, t, w = _head_inputs(np.float64, scale)
    ref = Mo.output_loss(n, E, b, t, w)
    got = fast.fused_output_loss(n, E, b, t, w, chunk=4, tile=tile)
    assert np.isfinite(got[0]) and got[0] == pytest.approx(ref[0], rel=1e-12)
    for g, r in zip(got[1:], ref[1:]):
        assert g.shape == r.shape and g.dtype == np.float64
        assert _close(g, r, 1e-12)


@pytest.mark.parametrize("scale", [1.0, 40.0])
def test_fused_head_equals_the_reference_output_loss_in_float32(scale):
    n, E, b, t, w = _head_inputs(np.float32, scale)
    ref64 = Mo.output_loss(*(x.astype(np.float64) for x in (n, E, b)), t, w.astype(np.float64))
    got = fast.fused_output_loss(n, E, b, t, w, chunk=4, tile=12)
    assert got[0] == pytest.approx(ref64[0], rel=1e-4)
    for g, r in zip(got[1:], ref64[1:]):
        assert g.dtype == np.float32 and _close(g, r, 1e-4)
    ref32 = Mo.output_loss(n, E, b, t, w)              # the reference in float32 too
    assert got[0] == pytest.approx(ref32[0], rel=1e-4)
    for g, r in zip(got[1:], ref32[1:]):
        assert _close(g, r, 1e-4)


def test_fused_head_without_weights_and_with_no_rows():
    n, E, b, t, _ = _head_inputs(np.float64, 1.0)
    ref, got = Mo.output_loss(n, E, b, t), fast.fused_output_loss(n, E, b, t, chunk=2, tile=8)
    assert got[0] == pytest.approx(ref[0], rel=1e-12)
    assert all(_close(g, r, 1e-12) for g, r in zip(got[1:], ref[1:]))
    loss, dn, dE, db = fast.fused_output_loss(n[:0], E, b, t[:0])
    assert loss == 0.0 and dn.shape == (0, 8) and not dE.any() and not db.any()


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_fused_head_is_the_same_on_one_and_two_threads(monkeypatch, scale):
    """The head's tile groups run side by side on two threads: the numbers must not move a bit."""
    r = np.random.default_rng(5)
    M, Dm, V = 40, 16, 3001                                   # 3001: a ragged last tile
    n = (scale * r.standard_normal((M, Dm))).astype(np.float32)
    E = r.standard_normal((V, Dm)).astype(np.float32)
    b = r.standard_normal(V).astype(np.float32)
    t = r.integers(0, V, M)
    if Ft.blas_threads() is None:
        pytest.skip("the head splits its tiles only under OpenBLAS (NumPy's default BLAS)")
    monkeypatch.setattr(Ft, "BLAS_SPIN_IS_SHORT", True)       # split even if NumPy came first
    import threading
    split, workers = Ft.run_split, set()

    def watched_split(work, items):                          # which threads ran the tile groups
        return split(lambda part: (workers.add(threading.get_ident()), work(part)), items)
    monkeypatch.setattr(Ft, "run_split", watched_split)
    runs = []
    for n_threads in (1, 2):
        monkeypatch.setattr(Ft, "SPLIT_THREADS", n_threads)
        workers.clear()
        before = Ft.blas_threads()
        runs.append(fast.fused_output_loss(n, E, b, t, chunk=16, tile=16 * 96))
        assert Ft.blas_threads() == before                    # BLAS's thread count restored
        assert len(workers) == (0 if n_threads == 1 else 2)   # serial, or really on two threads
    (l1, *g1), (l2, *g2) = runs
    assert l1 == l2
    for u, v in zip(g1, g2):
        np.testing.assert_array_equal(u, v)


def _batch():
    ids = np.array([[3, 1, 9, 1, 5, 0], [9, 2, 6, 9, 0, 0], [4, 4, 9, 2, 1, 7]])   # 9 = [MASK]
    sel = np.array([2, 6, 9, 14])
    targets = np.array([4, 2, 4, 8])                          # item 4 twice
    weights = np.array([1.0, 1.0, 1.0, 0.0])
    return ids, sel, targets, weights


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-4)])
def test_a_training_step_gives_the_same_loss_and_gradients_on_both_paths(dtype, rtol):
    cfg = Mo.Config(vocab_size=10, max_len=6, hidden=12, layers=2, heads=3,
                    hidden_dropout=0.2, attention_dropout=0.1)
    ids, sel, targets, weights = _batch()
    out = {}
    for kernels in fast.KERNELS:
        model = fast.build_model(cfg, seed=3, dtype=dtype, kernels=kernels)
        out[kernels] = model.loss_and_grads(ids, sel, targets, weights,
                                            rng=np.random.default_rng(7), train=True)
    (l_f, g_f), (l_r, g_r) = out["fast"], out["reference"]
    assert l_f == pytest.approx(l_r, rel=rtol)
    assert g_f.keys() == g_r.keys()
    for k in g_r:
        assert g_f[k].dtype == dtype and _close(g_f[k], g_r[k], rtol), k


def test_build_model_picks_the_output_loss_and_rejects_unknown_kernels():
    cfg = Mo.Config(vocab_size=10, max_len=6, hidden=12, heads=3)
    assert fast.build_model(cfg, kernels="reference").output_loss is Mo.output_loss
    assert fast.build_model(cfg, kernels="fast").output_loss is Fh.fused_output_loss
    assert Mo.BERT4Rec(cfg).output_loss is Mo.output_loss       # the model's own default
    with pytest.raises(ValueError, match="unknown kernels"):
        fast.build_model(cfg, kernels="turbo")


# --- the reference path never imports the fast path, and importing changes nothing


@pytest.mark.parametrize("name", REFERENCE_MODULES)
def test_no_reference_module_imports_the_fast_path(name):
    tree = ast.parse((ROOT / "minibert4rec" / f"{name}.py").read_text())
    imported = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.append((node.module or "") + "." + ".".join(a.name for a in node.names))
        elif isinstance(node, ast.Import):
            imported += [a.name for a in node.names]
    assert not [m for m in imported if "fast" in m.split(".") or "threads" in m.split(".")], imported
    assert "concurrent" not in " ".join(imported) and "ctypes" not in " ".join(imported)


def _run_python(code, env=None):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env=env, check=True).stdout.strip()


def test_importing_the_reference_path_loads_no_fast_code_and_the_package_leaves_the_environment_alone():
    modules = ", ".join(f"minibert4rec.{m}" for m in REFERENCE_MODULES)
    code = (f"import os, sys; before = dict(os.environ); import {modules}; "
            "import minibert4rec.gradcheck, minibert4rec.optim, minibert4rec.data, minibert4rec.cloze, "
            "minibert4rec.evaluate; "
            "print(sorted(m for m in sys.modules if m.startswith('minibert4rec.fast'))); "
            "import minibert4rec.train, minibert4rec.bench, minibert4rec.cli, minibert4rec.fast; "
            "print(dict(os.environ) == before)")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    first, second = _run_python(code, env).splitlines()
    assert first == "[]"
    assert second == "True"


def test_enabling_the_fast_path_sets_the_short_spin_only_before_numpy_and_never_over_the_user():
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    code = ("import os, sys; {first}; import minibert4rec.fast as f; f.enable(); "
            "print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'), f.threads.BLAS_SPIN_IS_SHORT)")
    assert _run_python(code.format(first="pass"), env) == "16 True"
    assert _run_python(code.format(first="import numpy"), env) == "None False"
    assert _run_python(code.format(first="pass"), {**env, "OPENBLAS_THREAD_TIMEOUT": "28"}) == "28 False"


@pytest.mark.parametrize("argv,fast_kernels", [
    (["train", "--dataset", "beauty"], True), (["--debug", "bench"], True), (["demo"], True),
    (["train", "--kernels", "reference"], False), (["bench", "--kernels=reference"], False),
    (["evaluate", "--run", "train"], False), (["gradcheck"], False), ([], False)])
def test_the_command_line_sets_the_spin_only_for_commands_on_the_fast_path(argv, fast_kernels):
    assert fast.command_uses_fast_kernels(argv) is fast_kernels


def test_python_m_minibert4rec_sets_the_short_spin_before_numpy_loads():
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-m", "minibert4rec", "bench", "--config", "tiny",
                          "--steps", "1", "--warmup", "0", "--no-compare", "--json"],
                         capture_output=True, text=True, cwd=ROOT, env=env, check=True).stdout
    import json
    assert "OPENBLAS_THREAD_TIMEOUT=16" in json.loads(out)["blas"]


# --- the thread helpers


def test_run_split_waits_for_every_part_and_reraises(monkeypatch):
    import threading
    monkeypatch.setattr(Ft, "SPLIT_THREADS", 2)
    done, release = [], threading.Event()

    def work(part):
        if 0 in part:
            release.set()
            raise RuntimeError("boom")                     # the calling thread's part fails
        release.wait(5)
        done.append(threading.current_thread().name)       # the worker's part finishes after it
    with pytest.raises(RuntimeError, match="boom"):
        Ft.run_split(work, range(4))
    assert len(done) == 1                                  # ... and was waited for

    def nested(part):                                      # a part that splits again runs inline
        Ft.run_split(lambda inner: done.extend(inner), [10 * p for p in part])
    done.clear()
    Ft.run_split(nested, range(4))
    assert sorted(done) == [0, 10, 20, 30]


def test_run_split_blas_stays_on_the_calling_thread_while_blas_spins_long(monkeypatch):
    """OpenBLAS's idle threads spinning long: the head's groups must not split."""
    import threading
    monkeypatch.setattr(Ft, "SPLIT_THREADS", 2)
    seen = []

    def work(part):
        seen.append((threading.get_ident(), list(part)))
    for short, parts in ((False, 1), (True, 2 if Ft.blas_threads() else 1)):
        monkeypatch.setattr(Ft, "BLAS_SPIN_IS_SHORT", short)
        seen.clear()
        Ft.run_split_blas(work, range(4))
        assert len(seen) == parts and sorted(i for _, p in seen for i in p) == [0, 1, 2, 3]
    monkeypatch.setattr(Ft, "BLAS_SPIN_IS_SHORT", False)
    seen.clear()
    Ft.run_split_blas(work, range(4))
    assert seen == [(threading.get_ident(), [0, 1, 2, 3])]


def test_gradcheck_passes_on_both_paths():
    from minibert4rec.gradcheck import suite
    for kernels in fast.KERNELS:
        results = suite(seed=1, kernels=kernels)
        assert results and all(r.passed for r in results), [r for r in results if not r.passed]
        assert any(r.component == f"14 output loss (training path, {kernels})" for r in results)


# --- the blocked optimizer update


@pytest.mark.parametrize("n_threads", [1, 2])
def test_blocked_optimizer_update_equals_the_reference_bit_for_bit(monkeypatch, n_threads):
    from minibert4rec.fast import optim as Fo
    from minibert4rec.optim import AdamWeightDecay
    monkeypatch.setattr(Ft, "SPLIT_THREADS", n_threads)
    monkeypatch.setattr(Fo, "BLOCK_ELEMENTS", 1000)          # 78 blocks of the table, the last ragged
    r = np.random.default_rng(0)
    params = {"item_emb": r.standard_normal((1101, 70)).astype(np.float32),
              "layer0.bq": r.standard_normal(70).astype(np.float32)}          # small: whole
    grads = [{k: r.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
             for _ in range(3)]
    runs = []
    for cls in (AdamWeightDecay, Fo.BlockedAdamWeightDecay):
        p = {k: v.copy() for k, v in params.items()}
        opt = cls(p, lr=0.1, warmup=0, total_steps=10, clip_norm=1.0)
        for g in grads:
            opt.step(p, {k: v.copy() for k, v in g.items()})
        runs.append((p, opt.m, opt.v))
    for (p1, m1, v1), (p2, m2, v2) in [runs]:
        for k in params:
            for a, b in ((p1[k], p2[k]), (m1[k], m2[k]), (v1[k], v2[k])):
                np.testing.assert_array_equal(a, b)
    assert fast.optimizer_for("fast") is Fo.BlockedAdamWeightDecay
    assert fast.optimizer_for("reference") is AdamWeightDecay
