"""Figure 2's numbers on hand-made attention, where the right answer is known.

Each statistic is tested on maps built to give an exact value (a head that
only looks at its left neighbour, one that only looks at the [MASK], a causal
triangle ...), so a wrong mask, an off-by-one in the window or a transposed
axis changes the number and fails the test.
"""
import json

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from minibert4rec import analysis as An  # noqa: E402
from minibert4rec.model import BERT4Rec, Config  # noqa: E402

K = 10


# -- hand-made (k, k) maps, rows = queries, columns = keys, k-1 = [MASK] --------------


def left_head(k=K):
    """Item query q attends to q-1 (query 0, with no left, to itself); [MASK] to item k-2."""
    A = np.zeros((k, k))
    A[0, 0] = 1.0
    A[np.arange(1, k), np.arange(k - 1)] = 1.0
    return A


def right_head(k=K):
    """Item query q attends to q+1 among items; the last item (next to the [MASK]) to itself."""
    A = np.zeros((k, k))
    A[np.arange(k - 2), np.arange(1, k - 1)] = 1.0
    A[k - 2, k - 2] = 1.0
    A[k - 1, k - 2] = 1.0
    return A


def mask_head(k=K):
    """Every query attends only to the [MASK] key."""
    A = np.zeros((k, k))
    A[:, k - 1] = 1.0
    return A


def uniform_head(k=K):
    return np.full((k, k), 1.0 / k)


def recent_head(k=K):
    """Every query spreads evenly over the last 3 items (keys k-4..k-2)."""
    A = np.zeros((k, k))
    A[:, k - 4:k - 1] = 1.0 / 3
    return A


def random_maps(rng, L, H, k=K, causal=False):
    """Random row-stochastic maps (L, H, k, k); lower-triangular (key <= query) if causal."""
    A = rng.random((L, H, k, k))
    if causal:
        A = A * np.tril(np.ones((k, k)))
    return A / A.sum(-1, keepdims=True)


# -- last_k_attention --------------------------------------------------------------------


def index_coded_attention(L, B, H, T):
    """(L, B, H, T, T) whose entry tells where it came from: 1e6 l + 1e5 h + 1e4 b + 100 q + j."""
    l, b, h, q, j = np.meshgrid(*map(np.arange, (L, B, H, T, T)), indexing="ij")
    return 1e6 * l + 1e5 * h + 1e4 * b + 100 * q + j


def loop_reference(attention, lengths, k):
    """The definition, one sequence at a time."""
    blocks = [attention[:, b, :, n - k:n, n - k:n] for b, n in enumerate(lengths) if n >= k]
    return np.mean(blocks, axis=0)


def test_last_k_picks_the_last_k_real_positions_of_each_sequence():
    L, B, H, T, k = 2, 4, 3, 8, 4
    att = index_coded_attention(L, B, H, T)
    lengths = np.array([5, 8, 3, 6])                 # sequence 2 is shorter than k: left out
    avg = An.last_k_attention(att, lengths, k)
    assert avg.shape == (L, H, k, k)
    # kept sequences 0, 1, 3 start their window at 1, 4, 2 (mean 7/3) and have b = 0, 1, 3
    qi, ji = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    for l in range(L):
        for h in range(H):
            want = 1e6 * l + 1e5 * h + 1e4 * (4 / 3) + 100 * (7 / 3 + qi) + (7 / 3 + ji)
            np.testing.assert_allclose(avg[l, h], want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(avg, loop_reference(att, lengths, k), rtol=1e-12)


def test_last_k_never_reads_padding():
    rng = np.random.default_rng(0)
    L, B, H, T, k = 2, 5, 2, 9, 3
    lengths = np.array([9, 4, 3, 7, 2])
    att = rng.random((L, B, H, T, T))
    for b, n in enumerate(lengths):                  # poison every padded query and key
        att[:, b, :, n:, :] = np.nan
        att[:, b, :, :, n:] = np.nan
    avg = An.last_k_attention(att, lengths, k)
    assert np.isfinite(avg).all()
    np.testing.assert_allclose(avg, loop_reference(att, lengths, k), rtol=1e-12)


def test_sequences_shorter_than_k_are_excluded_and_none_long_enough_raises():
    att = np.zeros((1, 3, 1, 6, 6))
    att[:, 0] = 1.0                                   # only sequence 0 is long enough
    avg = An.last_k_attention(att, np.array([6, 3, 4]), k=5)
    np.testing.assert_array_equal(avg, 1.0)           # the zeros of sequences 1, 2 did not count
    with pytest.raises(ValueError, match="k=5"):
        An.last_k_attention(att, np.array([4, 3, 4]), k=5)


# -- attention_stats: (a) left / right / self / [MASK] --------------------------------------


def test_pure_left_and_pure_right_heads():
    s = An.attention_stats(np.stack([left_head(), right_head()])[None])   # (1, 2, k, k)
    # 8 of the 9 item rows look at their left (right) neighbour, the 9th at itself
    np.testing.assert_allclose(s["left_mass"][0], [8 / 9, 0.0], atol=1e-12)
    np.testing.assert_allclose(s["right_mass"][0], [0.0, 8 / 9], atol=1e-12)
    np.testing.assert_allclose(s["self_mass"][0], [1 / 9, 1 / 9], atol=1e-12)
    np.testing.assert_allclose(s["mask_column_mass"][0], [0.0, 0.0], atol=1e-12)
    assert s["head_difference"][0] > 0.1
    obs = An.observations(s)["a_heads_look_in_different_directions"]
    assert obs["holds"] is True
    assert obs["left_heads"] == [1] and obs["right_heads"] == [2]


def test_two_left_heads_do_not_make_claim_a():
    s = An.attention_stats(np.stack([left_head(), left_head()])[None])
    assert An.observations(s)["a_heads_look_in_different_directions"]["holds"] is False
    assert s["head_difference"] == [0.0]


def test_the_mask_column_is_neither_right_nor_left():
    s = An.attention_stats(mask_head()[None, None])
    assert s["mask_column_mass"] == [[1.0]]
    assert s["right_mass"] == [[0.0]] and s["left_mass"] == [[0.0]] and s["self_mass"] == [[0.0]]


def test_the_four_shares_partition_every_item_row():
    rng = np.random.default_rng(1)
    s = An.attention_stats(random_maps(rng, 3, 4))
    total = sum(np.array(s[n]) for n in ("left_mass", "self_mass", "right_mass",
                                         "mask_column_mass"))
    np.testing.assert_allclose(total, 1.0, atol=1e-12)


def test_uniform_map_numbers():
    s = An.attention_stats(uniform_head()[None, None])
    # item row q has q keys to its left and k-2-q item keys to its right: mean (k-2)/2 of k
    assert s["left_mass"][0][0] == pytest.approx((K - 2) / 2 / K)
    assert s["right_mass"][0][0] == pytest.approx((K - 2) / 2 / K)
    assert s["mask_column_mass"][0][0] == pytest.approx(1 / K)
    assert s["recent_mass"][0] == pytest.approx(3 / K)


def test_weight_missing_from_a_row_is_left_attention_before_the_window():
    # half of every row went to positions before the window (a sequence longer than k)
    s = An.attention_stats(0.5 * right_head()[None, None])
    assert s["before_window_mass"] == [[pytest.approx(0.5)]]
    assert s["left_mass"] == [[pytest.approx(0.5)]]            # all of it is left of the query
    assert s["right_mass"] == [[pytest.approx(0.5 * 8 / 9)]]
    assert s["self_mass"][0][0] + s["left_mass"][0][0] + s["right_mass"][0][0] == pytest.approx(1)


def test_rows_summing_to_more_than_one_are_rejected():
    with pytest.raises(ValueError, match="at most 1"):
        An.attention_stats(2.0 * uniform_head()[None, None])
    with pytest.raises(ValueError, match="shape"):
        An.attention_stats(uniform_head())


# -- (b) recency, (c) [MASK], (d) both sides -------------------------------------------------


def test_layer2_recency():
    rising = np.stack([np.stack([uniform_head()] * 2), np.stack([recent_head()] * 2)])
    s = An.attention_stats(rising)                    # layer 1 uniform, layer 2 recent
    assert s["recent_mass"] == pytest.approx([3 / K, 1.0])
    assert s["mask_query_recent_mass"] == pytest.approx([3 / K, 1.0])
    obs = An.observations(s)["b_layer2_more_recent_than_layer1"]
    assert obs["holds"] is True and obs["mask_query_holds"] is True
    falling = An.attention_stats(rising[::-1])
    assert An.observations(falling)["b_layer2_more_recent_than_layer1"]["holds"] is False
    one_layer = An.attention_stats(rising[:1])
    assert An.observations(one_layer)["b_layer2_more_recent_than_layer1"]["holds"] is None


def test_recent_mass_separates_item_rows_from_the_mask_row():
    A = uniform_head()
    A[K - 1] = recent_head()[K - 1]                    # only the [MASK] row looks at recent items
    s = An.attention_stats(A[None, None])
    assert s["recent_mass"] == [pytest.approx(3 / K)]
    assert s["mask_query_recent_mass"] == [pytest.approx(1.0)]


def test_mask_column_claim():
    s = An.attention_stats(np.stack([mask_head(), left_head()])[None])
    assert s["mask_column_mass"][0] == pytest.approx([1.0, 0.0])
    c = An.observations(s)["c_layer1_attends_to_mask"]
    assert c["holds"] is True and c["heads_above_uniform"] == [1]
    no_mask = An.attention_stats(np.stack([left_head(), right_head()])[None])
    assert An.observations(no_mask)["c_layer1_attends_to_mask"]["holds"] is False
    # some weight on the [MASK], but less than the uniform share 1/k, is not "attending to it"
    A = 0.95 * left_head() + 0.05 * mask_head()
    weak = An.attention_stats(np.stack([A, uniform_head()])[None])
    c = An.observations(weak)["c_layer1_attends_to_mask"]
    assert c["layer1_mean"] == pytest.approx((0.05 + 1 / K) / 2) and c["holds"] is False


def test_causal_map_has_no_right_mass_and_claim_d():
    rng = np.random.default_rng(3)
    causal = An.attention_stats(random_maps(rng, 2, 2, causal=True))
    assert np.array(causal["right_mass"]).max() == 0.0
    assert causal["right_of_diagonal_mass"] == [0.0, 0.0]
    assert np.array(causal["mask_column_mass"]).max() == 0.0   # the [MASK] is right of every item
    bi = An.attention_stats(random_maps(rng, 2, 2))
    assert min(bi["right_of_diagonal_mass"]) > 0.2
    d = An.observations(bi, causal)["d_attends_both_sides"]
    assert d["holds"] is True and d["causal_right_of_diagonal_mass"] == [0.0, 0.0]
    assert An.observations(bi)["d_attends_both_sides"]["holds"] is True
    # a causal model does not "attend to both sides", and a leaky "causal" one fails the check
    assert An.observations(causal)["d_attends_both_sides"]["holds"] is False
    assert An.observations(bi, bi)["d_attends_both_sides"]["holds"] is False


def test_differences_within_the_margin_do_not_confirm_a_claim():
    nudge = np.zeros((K, K))
    nudge[:, K - 2], nudge[:, 0] = An.MARGIN / 2, -An.MARGIN / 2    # rows still sum to 1
    layers = np.stack([np.stack([uniform_head()] * 2), np.stack([uniform_head() + nudge] * 2)])
    s = An.attention_stats(layers)
    assert s["recent_mass"][1] > s["recent_mass"][0]                  # more recent, but barely
    assert An.observations(s)["b_layer2_more_recent_than_layer1"]["holds"] is False


def test_stats_and_observations_are_json_serialisable():
    rng = np.random.default_rng(4)
    s = An.attention_stats(random_maps(rng, 2, 3))
    text = json.dumps({"stats": s, "obs": An.observations(s, s)})
    assert json.loads(text)["stats"]["heads"] == 3


# -- on a real (tiny) model --------------------------------------------------------------


def tiny_model(**kw):
    return BERT4Rec(Config(vocab_size=12, max_len=12, hidden=8, heads=2, layers=2, **kw), seed=0)


def histories(n=13, seed=0):
    """Item ids 1..10 (11 is [MASK]); lengths 3..19, so some are too short and some truncated."""
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 11, size=rng.integers(3, 20)) for _ in range(n)]


def test_collect_attention_rows_sum_to_one_when_histories_fill_the_window():
    model = tiny_model()
    rng = np.random.default_rng(1)
    hs = [rng.integers(1, 11, size=K - 1) for _ in range(5)] + [np.arange(1, 4)]  # last: too short
    avg = An.collect_attention(model, hs, k=K)
    assert avg.shape == (2, 2, K, K)
    np.testing.assert_allclose(avg.sum(-1), 1.0, atol=1e-5)


def test_collect_attention_does_not_depend_on_the_batch_size():
    model, hs = tiny_model(), histories()
    avg = An.collect_attention(model, hs, batch_size=256, k=K)
    # sums and counts are accumulated, not per-batch means: batch size 4 gives the same
    np.testing.assert_allclose(An.collect_attention(model, hs, batch_size=4, k=K), avg,
                               atol=1e-6)
    assert (avg.sum(-1) < 1 + 1e-5).all()


def test_collect_attention_matches_one_sequence_by_hand():
    model = tiny_model()
    h = np.arange(1, 11)                                  # 10 items + [MASK] = 11 positions
    avg = An.collect_attention(model, [h], k=K)
    model.encode(np.append(h, model.cfg.mask_id)[None])
    full = model.attention[:, 0]                          # (L, H, 11, 11)
    np.testing.assert_allclose(avg, full[:, :, 1:, 1:], atol=1e-7)
    # the window starts at position 1: the weight on position 0 is what the rows miss
    before = full[:, :, 1:, 0]                            # (L, H, k)
    np.testing.assert_allclose(avg.sum(-1) + before, 1.0, atol=1e-5)
    s = An.attention_stats(avg)
    np.testing.assert_allclose(s["before_window_mass"], before[..., :-1].mean(-1), atol=1e-5)


def test_collect_attention_of_a_causal_model_has_no_right_mass():
    avg = An.collect_attention(tiny_model(attention="causal"), histories(), k=K)
    s = An.attention_stats(avg)
    assert max(s["right_of_diagonal_mass"]) < 1e-6
    assert np.max(s["mask_column_mass"]) < 1e-6


def test_collect_attention_raises_when_every_history_is_too_short():
    with pytest.raises(ValueError, match="k-1=9"):
        An.collect_attention(tiny_model(), [np.arange(1, 5)] * 3, k=K)


def test_an_untrained_model_confirms_none_of_a_b_c():
    obs = An.observations(An.attention_stats(An.collect_attention(tiny_model(), histories())))
    assert [obs[n]["holds"] for n in ("a_heads_look_in_different_directions",
                                      "b_layer2_more_recent_than_layer1",
                                      "c_layer1_attends_to_mask")] == [False, False, False]


def test_write_attention_report(tmp_path):
    rng = np.random.default_rng(5)
    avg = random_maps(rng, 2, 3)
    causal = An.attention_stats(random_maps(rng, 2, 3, causal=True))
    png, js = An.write_attention_report(avg, tmp_path / "out", stats_causal=causal)
    out = tmp_path / "out"
    assert (png, js) == (out / "figure2.png", out / "attention_stats.json")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(js.read_text())
    assert set(report["observations"]) == {"a_heads_look_in_different_directions",
                                           "b_layer2_more_recent_than_layer1",
                                           "c_layer1_attends_to_mask", "d_attends_both_sides"}
    assert report["stats"] == An.attention_stats(avg)      # JSON floats round-trip exactly
    np.testing.assert_allclose(report["average_attention"], avg)
    assert report["observations"]["d_attends_both_sides"]["holds"] is True


def test_window_labels():
    assert An.window_labels(4) == ["0", "1", "2", "[MASK]"]


# -- the gate: verdicts only for a model that learned -------------------------------------


def metrics(sampled, full):
    return {"sampled": {"HR@10": sampled}, "full": {"HR@10": full}}


def test_learned_enough_needs_both_protocols_above_popularity():
    pop = metrics(0.072, 0.0093)
    assert An.learned_enough(metrics(0.310, 0.0374), pop)["learned"] is True      # Beauty run
    # beats popularity in the sampled protocol only (an anti-popularity scorer): not learned
    assert An.learned_enough(metrics(0.309, 0.0), metrics(0.052, 0.005))["learned"] is False
    # above popularity, but within the margins
    assert An.learned_enough(metrics(0.072 + 0.04, 0.05), pop)["learned"] is False
    assert An.learned_enough(metrics(0.5, 0.0093 + 0.005), pop)["learned"] is False
    skill = An.learned_enough(metrics(0.072 + An.SKILL_SAMPLED_MARGIN,
                                      0.0093 + An.SKILL_FULL_MARGIN), pop)
    assert skill["learned"] is True                                              # margins met
    assert skill["model"] == {"sampled": 0.072 + 0.05, "full": 0.0093 + 0.01}
    assert "0.05" in skill["rule"] and "0.01" in skill["rule"]
    with pytest.raises(ValueError, match="'full'"):
        An.learned_enough({"sampled": {"HR@10": 0.3}}, pop)


def test_no_verdict_from_a_model_that_did_not_learn():
    rng = np.random.default_rng(6)
    layers = np.stack([np.stack([left_head(), right_head()]), np.stack([recent_head()] * 2)])
    s = An.attention_stats(layers)
    pop = metrics(0.1, 0.01)
    learned = An.observations(s, skill=An.learned_enough(metrics(0.5, 0.1), pop))
    untrained = An.observations(s, skill=An.learned_enough(metrics(0.1, 0.01), pop))
    unknown = An.observations(s)
    for name in learned:
        holds = learned[name]["holds"]
        assert untrained[name]["holds"] == holds                 # the numbers are still reported
        assert learned[name]["verdict"] == (An.AGREES if holds else An.DISAGREES)
        assert untrained[name]["verdict"] == An.NOT_TRAINED == "model not trained enough to judge"
        assert unknown[name]["verdict"] == An.NOT_CHECKED
    one_layer = An.attention_stats(random_maps(rng, 1, 2))
    assert An.observations(one_layer, skill=An.learned_enough(metrics(0.5, 0.1), pop))[
        "b_layer2_more_recent_than_layer1"]["verdict"] == An.UNDECIDED


def test_the_report_stores_the_skill(tmp_path):
    avg = random_maps(np.random.default_rng(7), 2, 2)
    skill = An.learned_enough(metrics(0.1, 0.0), metrics(0.1, 0.01))
    _, js = An.write_attention_report(avg, tmp_path, skill=skill)
    report = json.loads(js.read_text())
    assert report["skill"] == skill
    assert {o["verdict"] for o in report["observations"].values()} == {An.NOT_TRAINED}


def test_stability_counts_only_checkpoints_that_learned():
    def record(learned, holds):
        names = ("a", "b", "c", "d")
        return {"skill": {"learned": learned},
                "observations": {n: {"holds": h} for n, h in zip(names, holds)}}
    records = [record(True, (True, True, False, None)), record(True, (True, False, False, None)),
               record(False, (False, True, True, True))]            # did not learn: ignored
    out = An.stability(records)
    assert [out[n]["summary"] for n in "abcd"] == ["stable: holds", "comes and goes",
                                                   "stable: does not hold", An.NOT_TRAINED]
    assert (out["b"]["judged"], out["b"]["holds"]) == (2, 1)
    assert An.stability([]) == {}


def test_sequence_attention_is_the_users_own_window():
    model = tiny_model()
    h_long, h_short = np.arange(1, 11), np.array([3, 4])
    (A, ids), (A2, ids2) = An.sequence_attention(model, [h_long, h_short], k=K)
    assert A.shape == (2, 2, K, K) and A2.shape == (2, 2, 3, 3)       # the short one: 2 items + [MASK]
    np.testing.assert_array_equal(ids, np.append(h_long[1:], model.cfg.mask_id))
    np.testing.assert_array_equal(ids2, [3, 4, model.cfg.mask_id])
    model.encode(np.append(h_long, model.cfg.mask_id)[None])
    np.testing.assert_allclose(A, model.attention[:, 0][:, :, 1:, 1:], atol=1e-7)
    np.testing.assert_allclose(A2.sum(-1), 1.0, atol=1e-5)             # the whole sequence


def test_labelled_user_map_and_static_explorer(tmp_path, capsys):
    model = tiny_model()
    labels = ["[PAD]"] + [f"title {i}" for i in range(1, 11)] + ["[MASK]"]
    fig = An.write_user_attention(model, np.arange(1, 8), labels, tmp_path / "u.png", k=5)
    heat = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert len(heat) == 4                                               # L x H
    assert [t.get_text() for t in heat[-1].get_xticklabels()] == [
        "title 4", "title 5", "title 6", "title 7", "[MASK]"]
    assert (tmp_path / "u.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not An.widgets_available()                                   # plain Python: no front end
    fig = An.explore_attention(model, [np.arange(1, 8), np.arange(2, 6)], labels, k=5)
    assert fig.get_suptitle() == "sequence 1: layer 1, head 1"
    printed = capsys.readouterr().out
    assert "the [MASK] query attends most to" in printed and "title" in printed
    lines = An.mask_row_summary(*An.sequence_attention(model, [np.arange(1, 8)], k=5)[0], labels)
    assert len(lines) == 4 and lines[0].startswith("layer 1 head 1: ")


# -- the attention command: no verdict from a few-step run; one user's labelled map ------


def test_attention_command_refuses_a_verdict_for_a_few_step_run(tmp_path, capsys):
    from minibert4rec import cli
    from minibert4rec.settings import TrainConfig
    from minibert4rec.train import train
    run = tmp_path / "few-steps"
    train(TrainConfig(dataset="synthetic", synthetic_users=300, epochs=1, hidden=16, layers=2,
                      heads=2, batch_size=64, threads=1, progress=False), run, log=lambda *a: None)
    assert cli.main(["attention", "--run", str(run), "--out", str(tmp_path / "att")]) == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line[:2] in ("a_", "b_", "c_", "d_")]
    assert len(lines) == 4
    assert all(An.NOT_TRAINED in line for line in lines), printed
    assert "agrees" not in printed and "does not agree" not in printed
    report = json.loads((tmp_path / "att" / "attention_stats.json").read_text())
    assert report["skill"]["learned"] is False
    assert {o["verdict"] for o in report["observations"].values()} == {An.NOT_TRAINED}


def write_titled_data(folder, n_users=40, n_items=25, seed=0):
    """A RecBole-style data file (.inter) and its item file (.item): titles 'Film <id>'."""
    rng = np.random.default_rng(seed)
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(n_users):
        for t, item in enumerate(rng.integers(1, n_items + 1, size=rng.integers(4, 14))):
            rows.append(f"u{u}\t{item}\t{t}")
    inter = folder / "films.inter"
    inter.write_text("\n".join(rows) + "\n")
    (folder / "films.item").write_text("item_id:token\tmovie_title:token_seq\n" + "".join(
        f"{i}\tFilm {i}\n" for i in range(1, n_items + 1)))
    return inter


def test_attention_command_draws_one_users_map_with_titles(tmp_path, capsys):
    from minibert4rec import cli
    from minibert4rec.data import load_dataset
    from minibert4rec.settings import TrainConfig
    from minibert4rec.train import train
    data = write_titled_data(tmp_path)
    run = tmp_path / "films-run"
    train(TrainConfig(dataset=str(data), epochs=1, hidden=8, layers=2, heads=2, max_len=12,
                      n_negatives=10, batch_size=32, threads=1, progress=False), run,
          log=lambda *a: None)
    assert cli.main(["attention", "--run", str(run), "--user", "u3", "--last", "6"]) == 0
    printed = capsys.readouterr().out
    history = load_dataset(str(data)).sequences[3][:-1]             # every item but the test item
    shown = min(6, len(history) + 1)
    assert f"user u3: {len(history)} items before the test item" in printed
    assert printed.count("Film ") >= shown - 1 and "[MASK]" in printed
    assert "titles from" in printed and "films.item" in printed
    png = run / "attention" / "user_u3.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["attention", "--run", str(run), "--user", "nobody"]) == 2
    assert "unknown user 'nobody'" in capsys.readouterr().err


def test_claim_numbers_cross_their_thresholds_exactly_when_the_claims_hold():
    rng = np.random.default_rng(8)
    cases = [np.stack([np.stack([left_head(), right_head()]), np.stack([recent_head()] * 2)]),
             np.stack([np.stack([mask_head(), left_head()]), np.stack([uniform_head()] * 2)]),
             random_maps(rng, 2, 3), random_maps(rng, 3, 2, causal=True)]
    for maps in cases:
        s = An.attention_stats(maps)
        obs, numbers = An.observations(s), An.claim_numbers(s)
        for name, (value, threshold) in numbers.items():
            assert (value > threshold) == obs[name]["holds"], name
    one_layer = An.attention_stats(random_maps(rng, 1, 2))
    assert An.claim_numbers(one_layer)["b_layer2_more_recent_than_layer1"][0] is None


def test_attention_over_training_scores_on_the_runs_own_test_negatives(tmp_path):
    """With --negatives-seed, every epoch's test metrics use those negatives, as the run's
    own --track-test curve does (not the training seed's)."""
    from minibert4rec.data import leave_one_out
    from minibert4rec.evaluate import popularity_metrics
    from minibert4rec.settings import TrainConfig, dataset_of
    tcfg = TrainConfig(dataset="synthetic", synthetic_users=200, epochs=2, hidden=16, layers=1,
                       heads=2, batch_size=64, seed=0, negatives_seed=1, track_test=True,
                       threads=1, progress=False)
    run = tmp_path / "study"
    records = An.attention_over_training(tcfg, run, k=5)
    history = json.loads((run / "state.json").read_text())["history"]
    assert [r["epoch"] for r in records] == [1, 2]
    ds = dataset_of(tcfg.resolved())
    popularity = popularity_metrics(ds, leave_one_out(ds), "both", seed=1)   # the same negatives
    assert popularity != popularity_metrics(ds, leave_one_out(ds), "both", seed=0)   # (they differ)
    for record, logged in zip(records, history):
        assert record["test"]["sampled"] == pytest.approx(logged["test"], abs=1e-12)
        assert record["skill"] == An.learned_enough(record["test"], popularity)
