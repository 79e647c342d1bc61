"""The benchmark engine (minibert4rec.bench): a smoke run of the tiny configuration,
the analytic FLOP count against a hand computation, the exclusive-time profiler on a
fake clock, and that every timing wrapper is taken out again.

No assertion depends on how fast anything runs (these machines are shared and noisy).
"""
import importlib
import json
import math
import platform
import subprocess
import sys

import numpy as np
import pytest

from minibert4rec import bench


def _current_functions():
    """(module, name) -> the object the library calls now, for every patch target."""
    out = {}
    for mod_name, attr, *_ in bench.PATCHES:
        mod = importlib.import_module(mod_name)
        if hasattr(mod, attr):
            out[(mod_name, attr)] = getattr(mod, attr)
    return out


ORIGINALS = _current_functions()


@pytest.fixture(scope="module")
def result():
    return bench.run_benchmark("tiny", steps=3, warmup=1, seed=0, peak=True)


def test_result_has_the_documented_keys(result):
    for key in ("train_sequences_per_s", "train_tokens_per_s", "inference_sequences_per_s",
                "achieved_gflops", "peak_gflops", "efficiency", "peak_rss_mb", "components",
                "step_ms", "flops_per_step", "B", "mean_T", "mean_M", "blas", "numpy"):
        assert key in result, key
    for key in ("train_sequences_per_s", "train_tokens_per_s", "inference_sequences_per_s",
                "achieved_gflops", "peak_gflops", "efficiency", "peak_rss_mb", "flops_per_step"):
        assert math.isfinite(result[key]) and result[key] > 0, (key, result[key])
    s = result["step_ms"]
    assert 0 < s["min"] <= s["median"] <= s["max"]
    assert result["efficiency"] == pytest.approx(result["achieved_gflops"] / result["peak_gflops"])
    assert result["B"] == bench.CONFIGS["tiny"]["batch_size"]
    assert 1 <= result["mean_T"] <= bench.CONFIGS["tiny"]["max_len"]
    json.dumps(result)                                   # the --json output is one JSON object


def test_efficiency_ceiling_from_the_head_matmuls_alone(result):
    h = result["head_matmul_gflops"]
    assert h["best"] == max(h["blas"], h["split"]) > 0
    assert math.isfinite(result["efficiency_ceiling"]) and result["efficiency_ceiling"] > 0
    assert "efficiency ceiling" in bench.format_report(result)
    # a direct call at a small shape: both ways are timed
    direct = bench.head_matmul_gflops(37, 8, 1000, repeats=1)
    assert set(direct) == {"blas", "split", "best"} and direct["best"] > 0


def test_component_table_covers_the_step(result):
    rows = {c["component"]: c for c in result["components"]}
    # the parts of a step: embeddings, attention (projections, scores/softmax, weighted sum),
    # feed-forward, LayerNorms, output head, loss, optimizer step
    for name in (bench.EMB, bench.PROJ, bench.SCORES, bench.SOFTMAX, bench.FFN_MM, bench.FFN_GELU,
                 bench.LN, bench.HEAD, bench.LOGITS, bench.OPT_UPDATE, bench.OTHER):
        assert name in rows, name
    for c in result["components"]:
        for k in ("forward_ms", "backward_ms", "fused_ms", "step_ms", "total_ms", "share"):
            assert c[k] >= 0.0, (c["component"], k, c[k])
    # forward and backward are timed apart where they are separate functions
    for name in (bench.PROJ, bench.FFN_MM, bench.LN):
        assert rows[name]["forward_ms"] > 0 and rows[name]["backward_ms"] > 0, name
    total = sum(c["total_ms"] for c in result["components"])
    assert sum(c["share"] for c in result["components"]) == pytest.approx(1.0, rel=1e-6)
    # the rows are per-step means over the profiled steps, the step time a median: generous
    assert 0.5 * result["profiled_step_ms"]["median"] <= total <= 2.0 * result["profiled_step_ms"]["max"]
    attributed = total - rows[bench.OTHER]["total_ms"]
    assert attributed >= 0.5 * total          # the wrappers see most of the step
    assert result["unprofiled_names"] == []   # every patch target exists in the library


def test_every_timing_wrapper_is_removed(result):
    assert _current_functions() == ORIGINALS
    from minibert4rec import fast, model
    assert not hasattr(model.output_loss, "__bench_original__")
    assert not hasattr(fast.fused_output_loss, "__bench_original__")
    assert fast.threads.SPLIT_THREADS == 2                  # the tricks table restores it


def test_tricks_table_times_the_reference_path_and_each_fast_trick(result):
    tricks = result["tricks"]
    assert [t["trick"] for t in tricks] == [label for label, _ in bench.TRICKS]
    assert tricks[0]["speedup"] == 1.0                       # the reference against itself
    for t in tricks:
        assert t["step_ms"] > 0 and t["sequences_per_s"] > 0 and t["speedup"] > 0
    assert result["reference_sequences_per_s"] == tricks[0]["sequences_per_s"]
    assert result["kernels"] == "fast"
    opt = result["optimizer_tricks"]
    assert [o["trick"] for o in opt] == ["reference: optimizer update, whole arrays",
                                         "blocked optimizer update, two threads"]
    assert all(o["update_ms"] > 0 and o["speedup"] > 0 for o in opt) and opt[0]["speedup"] == 1.0
    report = bench.format_report(result)
    assert "what each trick buys" in report and tricks[1]["trick"] in report


def test_the_reference_kernels_can_be_benchmarked_alone():
    r = bench.run_benchmark("tiny", steps=1, warmup=0, profile=False, inference=False, peak=False,
                            kernels="reference", compare=False)
    assert r["kernels"] == "reference" and "tricks" not in r


def test_wrappers_are_removed_after_an_exception():
    with pytest.raises(RuntimeError):
        with bench.profiled():
            from minibert4rec import encoder
            assert hasattr(encoder.mha_forward, "__bench_original__")
            raise RuntimeError("boom")
    assert _current_functions() == ORIGINALS


def test_train_step_flops_by_hand():
    # B=2, T=3 (6 rows), M=4 masked, D=4, L=1, H=2, F=8, V=10
    f = bench.forward_flops(B=2, T=3, M=4, D=4, L=1, H=2, F=8, V=10)
    assert f[bench.PROJ] == 2 * 6 * 4 * 12 + 2 * 6 * 4 * 4 == 768     # QKV (D x 3D) + output (D x D)
    assert f[bench.SCORES] == 2 * (2 * 2 * 2 * 3 * 3 * 2) == 288       # QK^T and AV: B H T T Dh, Dh = 2
    assert f[bench.FFN_MM] == 2 * 6 * 4 * 8 * 2 == 768                 # W1 and W2
    assert f[bench.HEAD] == 2 * 4 * 4 * 4 == 128                       # Dense on the M rows
    assert f[bench.LOGITS] == 2 * 4 * 4 * 10 == 320                    # tied logits M x V
    t = bench.train_step_flops(B=2, T=3, M=4, D=4, L=1, H=2, F=8, V=10)
    assert sum(t.values()) == 3 * 2272 == 6816                         # forward + 2x backward
    # the encoder's share doubles with L, the head's does not
    t2 = bench.train_step_flops(B=2, T=3, M=4, D=4, L=2, H=2, F=8, V=10)
    assert t2[bench.FFN_MM] == 2 * t[bench.FFN_MM] and t2[bench.LOGITS] == t[bench.LOGITS]
    # inference: the encoder over B x T and one scored row per sequence
    assert (bench.inference_flops(B=2, T=3, D=4, L=1, H=2, F=8, V=10)
            == 768 + 288 + 768 + 2 * 2 * 4 * 4 + 2 * 2 * 4 * 10)


def test_profiler_charges_exclusive_time(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    prof = bench.Profiler()

    def leaf():
        clock[0] += 2.0

    def parent(child):
        clock[0] += 1.0
        child()
        clock[0] += 3.0

    inner = prof.wrap(leaf, "leaf", bench.FWD)
    outer = prof.wrap(lambda: parent(inner), "parent", bench.FWD)
    outer()
    assert prof.times[("parent", bench.FWD)] == 4.0       # 1 + 3, the child's 2 subtracted
    assert prof.times[("leaf", bench.FWD)] == 2.0
    prof.reset()
    sticky = prof.wrap(lambda: parent(inner), "head", bench.BWD, sticky=True)
    sticky()
    assert dict(prof.times) == {("head", bench.BWD): 6.0}  # a sticky parent keeps its callees


def test_synthetic_batches_follow_the_cloze_rules():
    cfg = bench.resolve_config("tiny")
    rng = np.random.default_rng(0)
    batches = bench.synthetic_batches(cfg, 4, rng)
    assert len(batches) == 4
    mask_id = cfg["vocab_size"] - 1
    for b in batches:
        B, T = b.ids.shape
        assert B == cfg["batch_size"] and T == b.lengths.max()
        flat = b.ids.reshape(-1)
        assert np.all(flat[b.sel] == mask_id)                        # masked positions hold [MASK]
        assert np.all((b.targets >= 1) & (b.targets <= mask_id - 1))  # targets are real items
        assert len(b.sel) <= B * cfg["max_predictions"]
        pad = np.arange(T)[None, :] >= b.lengths[:, None]
        assert np.all(b.ids[pad] == 0) and np.all(b.ids[~pad] > 0)


def test_synthetic_batches_mix_cloze_copies_like_training():
    # Beauty's and ML-1m's benchmark batches follow the training preset: 10 cloze + 1 mask-last
    assert bench.CONFIGS["beauty"]["cloze_copies"] == bench.CONFIGS["ml-1m"]["cloze_copies"] == 10
    for copies in (1, 10):
        cfg = bench.resolve_config("tiny", cloze_copies=copies)
        mask_id = cfg["vocab_size"] - 1
        rows = only_last = 0
        for b in bench.synthetic_batches(cfg, 22, np.random.default_rng(0)):
            n_masks = (b.ids == mask_id).sum(axis=1)                     # (B,)
            last_masked = b.ids[np.arange(len(b.lengths)), b.lengths - 1] == mask_id
            rows += len(b.lengths)
            only_last += int(np.sum((n_masks == 1) & last_masked))
        # one mask, on the last item: the mask-last instances (and a few short cloze rows)
        assert only_last / rows == pytest.approx(1 / (copies + 1), abs=0.08), copies


def test_length_laws():
    rng = np.random.default_rng(0)
    beauty = bench.user_lengths("beauty", 20000, 50, rng)
    assert beauty.min() == 4 and 7.0 < beauty.mean() < 8.7 and np.median(beauty) == 5
    ml = bench.user_lengths("ml-1m", 5000, 200, rng)
    assert ml.min() >= 19 and 70 < np.median(ml) < 130 and (ml >= 200).mean() > 0.2
    assert np.all(bench.user_lengths("full", 10, 7, rng) == 7)
    with pytest.raises(ValueError):
        bench.user_lengths("zipf", 10, 7, rng)


def test_reports_are_text_tables(result):
    text = bench.format_report(result)
    assert "training sequences/s" in text and "efficiency" in text
    for c in result["components"]:
        assert c["component"] in text
    rows = bench.scaling("tiny", vary="batch", values=[8, 16], steps=1, warmup=0, peak=10.0)
    assert [r["value"] for r in rows] == [8, 16]
    assert all(r["train_sequences_per_s"] > 0 for r in rows)
    assert "train seq/s" in bench.format_scaling(rows)
    with pytest.raises(ValueError):
        bench.scaling("tiny", vary="heads")
    with pytest.raises(ValueError):
        bench.run_benchmark("huge")


def test_blas_thread_limit_restores_the_count():
    before = bench.blas_threads()
    with bench.blas_thread_limit(None):
        assert bench.blas_threads() == before
    if before is not None:                    # OpenBLAS found: the limit applies and is undone
        with bench.blas_thread_limit(1):
            assert bench.blas_threads() == 1
        assert bench.blas_threads() == before


def test_command_prints_one_json_object(capsys):
    from minibert4rec import cli
    assert cli.main(["bench", "--config", "tiny", "--steps", "1", "--warmup", "0", "--json",
                     "--no-compare"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"] == "tiny" and out["steps"] == 1 and "efficiency" in out


def test_an_unknown_configuration_is_a_one_line_error(capsys):
    from minibert4rec import cli
    assert cli.main(["bench", "--config", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown benchmark configuration 'nope'") and "\n" not in err
    assert all(name in err for name in bench.CONFIGS)
    bench_help = cli.build_parser()._subparsers._group_actions[0].choices["bench"].format_help()
    assert all(name in bench_help for name in bench.CONFIGS)    # the help names every one


def test_building_the_command_line_loads_no_numpy():
    """--help and download stay quick: bench (NumPy, the model) loads when its command runs."""
    import subprocess
    import sys
    code = ("import sys; from minibert4rec import cli; cli.build_parser(); "
            "print(sorted(m for m in ('numpy', 'minibert4rec.bench', 'minibert4rec.model') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


_FAULTS = """
import resource, sys, numpy as np
from minibert4rec.fast import threads
if sys.argv[1] == "keep":
    assert threads.keep_freed_memory() and threads.memory_kept()
x = np.ones(16_000_000, dtype=np.float32)                  # 64 MB: above malloc's largest mmap threshold
y = x * x                                                  # first touch: faults either way
del y
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    y = x * x                                              # the same temporary, again and again
    del y
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings are glibc's")
def test_keeping_freed_memory_removes_the_page_faults_of_repeated_temporaries():
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True,
                             check=True)
        return int(out.stdout.split()[-1])
    default, kept = faults("default"), faults("keep")
    # 5 fresh 64 MB blocks are faulted in again: 15,600 small pages each, or 32 huge
    # (2 MB) pages each where the kernel backs large mappings with transparent huge pages
    assert default >= 5 * 32
    assert kept < 0.1 * default          # reused: already mapped


def test_head_kernel_probe_script_times_the_four_phases():
    """benchmarks/head_kernel_probe.py runs and its shares add up, at a tiny shape."""
    import os
    import re
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "head_kernel_probe.py")
    out = subprocess.run([sys.executable, script, "--rows", "64", "--vocab", "3000", "--repeats", "1"],
                         capture_output=True, text=True, check=True).stdout
    shares = [float(s) for s in re.findall(r"^(?:logits|exp,|z E|dE) .*?\s([\d.]+)%", out, re.M)]
    assert len(shares) == 4 and abs(sum(shares) - 100.0) < 0.5, out
    assert "head (these four)" in out and "one logits tile (64 x 65) @ (65 x" in out
    assert ("numba loop kernel" in out) or ("numba not installed" in out)
