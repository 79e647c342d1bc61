"""The cloze task: windows, mask counts, mask-last, padding never masked, batches."""
import numpy as np
import pytest

from minibert4rec.cloze import ClozeSampler, cloze_masks, make_windows, mask_last


def test_sliding_windows():
    seq = np.arange(1, 13)                                   # 12 items, N = 5, step 3
    w, lengths = make_windows([seq, np.array([7, 8])], max_len=5, step=3)
    starts = [int(r[0]) - 1 for r in w[:-1]]
    assert starts == [0, 1, 4, 7]                            # stepped back from the end, plus 0
    assert np.array_equal(w[3], [8, 9, 10, 11, 12])
    assert np.array_equal(w[4], [7, 8, 0, 0, 0]) and list(lengths) == [5, 5, 5, 5, 2]


@pytest.mark.parametrize("n, starts", [(57, [0, 2, 7]), (63, [0, 3, 8, 13]), (60, [0, 5, 10]),
                                       (51, [0, 1]), (50, [0])])
def test_window_starts_are_the_authors(n, starts):
    """gen_data_fin.py: beg_idx = range(n - N, 0, -step) + [0], in order (N = 50, step 5 as Beauty)."""
    w, _ = make_windows([np.arange(1, n + 1)], max_len=50, step=5)
    assert [int(r[0]) - 1 for r in w] == starts


def test_mask_counts_follow_the_authors_rule():
    lengths = np.array([1, 2, 5, 10, 50, 50])
    rng = np.random.default_rng(0)
    m = cloze_masks(lengths, 50, mask_ratio=0.6, max_predictions=30, rng=rng)
    expected = np.minimum(30, np.maximum(1, np.rint(lengths * 0.6)))
    assert np.array_equal(m.sum(1), expected)
    # padding (positions >= length) is never masked
    assert not np.any(m & (np.arange(50)[None, :] >= lengths[:, None]))


def test_masked_positions_are_uniform():
    lengths = np.full(20000, 10)
    m = cloze_masks(lengths, 10, mask_ratio=0.2, max_predictions=5, rng=np.random.default_rng(1))
    freq = m.mean(0)                                          # each position: 2/10
    assert np.allclose(freq, 0.2, atol=0.01)


def test_mask_last_masks_only_the_last_item():
    m = mask_last(np.array([3, 1, 4]), 5)
    assert m.sum() == 3 and m[0, 2] and m[1, 0] and m[2, 3]


def test_epoch_batches():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 30, size=rng.integers(3, 25)) for _ in range(200)]
    s = ClozeSampler(seqs, max_len=10, mask_ratio=0.5, max_predictions=4, sliding_step=5, mask_id=31)
    batches = list(s.epoch(32, np.random.default_rng(1), bucket=2))
    assert len(batches) == s.n_batches(32, bucket=2)
    assert sum(len(b.lengths) for b in batches) == s.n_instances == 2 * len(s.lengths)
    n_masked_single = 0
    for b in batches:
        B, T = b.ids.shape
        assert T == b.lengths.max()                           # trimmed to the batch
        flat = b.ids.reshape(-1)
        assert np.all(flat[b.sel] == 31)                      # the selected positions are [MASK]
        assert np.all((b.targets >= 1) & (b.targets <= 30))   # ... and hide real items
        assert np.sum(flat == 31) == len(b.sel)
        rows = b.sel // T
        cols = b.sel % T
        assert np.all(cols < b.lengths[rows])                 # never a padding position
        per_row = np.bincount(rows, minlength=B)
        assert per_row.min() >= 1 and per_row.max() <= 4
        n_masked_single += np.sum((per_row == 1) & (cols[np.searchsorted(rows, np.arange(B))]
                                                   == b.lengths - 1))
    # at least the mask-last instances have exactly one mask, on the last item
    assert n_masked_single >= len(s.lengths)


def test_masks_are_redrawn_each_epoch_and_seeded():
    seqs = [np.arange(1, 21)] * 50
    s = ClozeSampler(seqs, 20, 0.3, 10, 5, mask_id=99)
    a = [b.sel.tolist() for b in s.epoch(10, np.random.default_rng(0))]
    b = [b.sel.tolist() for b in s.epoch(10, np.random.default_rng(0))]
    rng = np.random.default_rng(0)
    c1 = [b.sel.tolist() for b in s.epoch(10, rng)]
    c2 = [b.sel.tolist() for b in s.epoch(10, rng)]
    assert a == b == c1 and c1 != c2


def test_cloze_copies_give_the_authors_ratio_of_mask_last_instances():
    # copies=K: K cloze instances per window, each with its own mask, plus one mask-last
    seqs = [np.arange(1, 21)] * 40                      # 40 windows of 20 items
    s = ClozeSampler(seqs, 20, 0.3, 10, 5, mask_id=99, copies=10)
    assert s.n_instances == 11 * 40
    batches = list(s.epoch(64, np.random.default_rng(0)))
    assert len(batches) == s.n_batches(64)
    counts = np.concatenate([np.bincount(b.sel // b.ids.shape[1], minlength=len(b.lengths))
                             for b in batches])
    assert len(counts) == 11 * 40
    assert np.sum(counts == 1) == 40                    # the mask-last instances: 1 in 11
    assert np.sum(counts == 6) == 400                   # round(20 * 0.3) = 6 for every copy
    masks = {tuple(np.flatnonzero(b.ids[r] == 99)) for b in batches for r in range(len(b.ids))
             if np.sum(b.ids[r] == 99) == 6}
    assert len(masks) > 300                             # the copies are drawn independently
    with pytest.raises(ValueError):
        ClozeSampler(seqs, 20, 0.3, 10, 5, mask_id=99, copies=0)
