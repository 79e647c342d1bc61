"""Tests for minibert4rec.data: loaders, id remapping, leave-one-out, synthetic data."""
from pathlib import Path

import numpy as np
import pytest

from minibert4rec import data
from minibert4rec.errors import InputError

BEAUTY = Path(__file__).parents[1].parent / "shared/data/beauty.txt"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def raw_sequences(ds):
    """Sequences as lists of raw item ids (independent of the remapping)."""
    return [ds.decode_items(s) for s in ds.sequences]


# --------------------------------------------------------------------------- loaders
def test_user_item_file_keeps_file_order_and_remaps_by_frequency(tmp_path):
    path = write(tmp_path, "ui.txt", "1 10\n1 20\n\n2 20\n2 30\n1 30\n3 20\n")
    ds = data.load_user_item_file(path)
    assert ds.raw_user_ids.tolist() == ["1", "2", "3"]          # first appearance
    assert raw_sequences(ds) == [["10", "20", "30"], ["20", "30"], ["20"]]
    # 20 appears 3x, 30 2x, 10 1x -> ids 1, 2, 3
    assert ds.raw_item_ids.tolist() == ["20", "30", "10"]
    assert [s.tolist() for s in ds.sequences] == [[3, 1, 2], [1, 2], [1]]
    assert all(s.dtype == np.int64 for s in ds.sequences)
    assert ds.n_items == 3 and ds.mask_id == 4 and ds.vocab_size == 5 and ds.n_users == 3


def test_frequency_ties_broken_by_first_appearance(tmp_path):
    path = write(tmp_path, "ui.txt", "1 7\n1 5\n2 9\n2 5\n")
    ds = data.load_user_item_file(path)
    assert ds.raw_item_ids.tolist() == ["5", "7", "9"]   # 5 twice; 7 before 9


def test_ratings_dat_sorted_by_timestamp_ties_stable(tmp_path):
    path = write(tmp_path, "ratings.dat",
                 "1::100::5::30\n1::200::3::10\n2::100::4::5\n1::300::4::10\n1::400::1::20\n")
    ds = data.load_movielens(path)
    assert raw_sequences(ds) == [["200", "300", "400", "100"], ["100"]]


def test_u_data_tab_separated(tmp_path):
    path = write(tmp_path, "u.data", "5\t1\t3\t900\n5\t2\t3\t100\n6\t1\t1\t50\n")
    ds = data.load_movielens(path)
    assert ds.raw_user_ids.tolist() == ["5", "6"]
    assert raw_sequences(ds) == [["2", "1"], ["1"]]


def test_recbole_inter_header(tmp_path):
    path = write(tmp_path, "x.inter",
                 "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                 "u1\tA\t3\t20\nu1\tB\t3\t10\nu2\tA\t1\t10\nu1\tC\t5\t10\n")
    ds = data.load_table(path)
    assert raw_sequences(ds) == [["B", "C", "A"], ["A"]]
    assert ds.raw_user_ids.tolist() == ["u1", "u2"]


def test_csv_header_without_timestamp_keeps_file_order(tmp_path):
    path = write(tmp_path, "x.csv", "item,user\nb, x\na, x\nb, y\n")
    ds = data.load_table(path)
    assert raw_sequences(ds) == [["b", "a"], ["b"]]


def test_string_ids_that_look_alike_stay_distinct(tmp_path):
    path = write(tmp_path, "x.csv", "user;item\nu;007\nu;7\n")
    ds = data.load_table(path)
    assert ds.n_items == 2 and raw_sequences(ds) == [["007", "7"]]


@pytest.mark.parametrize("name,text", [
    ("ui.txt", "1 2\n"),                                        # user-item
    ("ratings.dat", "1::2::3::4\n"),                            # MovieLens 1M
    ("u.data", "1\t2\t3\t4\n"),                                 # MovieLens 100K
    ("r.inter", "user_id:token\titem_id:token\n1\t2\n"),         # RecBole
    ("r.txt", "user,item,timestamp\n1,2,3\n"),                 # csv with header
])
def test_load_dataset_detects_format(tmp_path, name, text):
    ds = data.load_dataset(str(write(tmp_path, name, text)), min_interactions=1)
    assert ds.decode_items(ds.sequences[0]) == ["2"]


# --------------------------------------------------------------------------- filtering, vocab
def test_min_interactions_filter_remaps_ids(tmp_path):
    # item 9 is the most frequent overall, but only through user 2, who is dropped
    path = write(tmp_path, "ui.txt", "1 5\n1 6\n1 5\n2 9\n2 9\n2 9\n2 9\n3 6\n")
    ds = data.load_dataset(str(path), min_interactions=3)
    assert ds.raw_user_ids.tolist() == ["1", "2"]
    ds = data.load_dataset(str(path), min_interactions=4)
    assert ds.raw_user_ids.tolist() == ["2"] and ds.n_items == 1
    path = write(tmp_path, "ui2.txt", "1 5\n1 6\n1 5\n2 9\n2 9\n3 6\n")
    ds = data.load_dataset(str(path), min_interactions=3)
    assert ds.raw_user_ids.tolist() == ["1"]
    assert ds.raw_item_ids.tolist() == ["5", "6"] and ds.n_items == 2   # 9 is gone


def test_min_interactions_leaves_nobody(tmp_path):
    path = write(tmp_path, "tiny.txt", "1 5\n2 6\n")
    with pytest.raises(InputError, match=r"tiny\.txt.*no user has at least 3"):
        data.load_dataset(str(path))


def test_popularity_encode_decode(tmp_path):
    ds = data.load_user_item_file(write(tmp_path, "ui.txt", "1 10\n1 20\n2 20\n"))
    pop = ds.popularity()
    assert pop.shape == (ds.vocab_size,) and pop.dtype == np.float64
    assert pop.tolist() == [0.0, 2.0, 1.0, 0.0]
    assert ds.encode_items(["10", 20]).tolist() == [2, 1]
    assert ds.decode_items([1, 2, 0, 3]) == ["20", "10", "[PAD]", "[MASK]"]
    with pytest.raises(InputError, match="unknown item id.*99"):
        ds.encode_items(["10", "99"])


# --------------------------------------------------------------------------- split
def test_leave_one_out_hand_example(tmp_path):
    ds = data.load_user_item_file(write(tmp_path, "ui.txt", "1 1\n1 2\n1 3\n1 4\n2 3\n2 1\n2 2\n"))
    # frequency: 1,2,3 twice each (first appearance 1,2,3), 4 once -> ids equal raw ids
    assert ds.raw_item_ids.tolist() == ["1", "2", "3", "4"]
    sp = data.leave_one_out(ds)
    assert [s.tolist() for s in sp.train] == [[1, 2, 3], [3, 1]]
    assert [s.tolist() for s in sp.valid_input] == [[1, 2], [3]]
    assert sp.valid_target.tolist() == [3, 1]
    assert [s.tolist() for s in sp.test_input] == [[1, 2, 3], [3, 1]]
    assert sp.test_target.tolist() == [4, 2]


def test_leave_one_out_needs_three_items(tmp_path):
    ds = data.load_user_item_file(write(tmp_path, "ui.txt", "1 1\n1 2\n"))
    with pytest.raises(InputError, match="at least 3"):
        data.leave_one_out(ds)


# --------------------------------------------------------------------------- synthetic
def test_synthetic_deterministic_and_seed_dependent():
    a, b, c = data.synthetic(seed=3), data.synthetic(seed=3), data.synthetic(seed=4)
    assert len(a.sequences) == 2000 and a.n_items == 200
    assert all(np.array_equal(x, y) for x, y in zip(a.sequences, b.sequences))
    assert not all(len(x) == len(y) and np.array_equal(x, y) for x, y in zip(a.sequences, c.sequences))
    lengths = [len(s) for s in a.sequences]
    assert min(lengths) >= 5 and max(lengths) <= 40 and max(lengths) > 20


def test_synthetic_has_planted_sequential_structure():
    """Next-item from the last item (bigram counts) beats popularity by far."""
    ds = data.synthetic(seed=0)
    sp = data.leave_one_out(ds)
    counts = np.zeros((ds.vocab_size, ds.vocab_size))
    for s in sp.train:
        np.add.at(counts, (s[:-1], s[1:]), 1)
    last = np.array([s[-1] for s in sp.test_input])
    bigram_hit1 = (counts[last].argmax(1) == sp.test_target).mean()
    top10 = np.argsort(-ds.popularity())[:10]
    popularity_hit10 = np.isin(sp.test_target, top10).mean()
    assert bigram_hit1 > 0.6 and popularity_hit10 < 0.4


# --------------------------------------------------------------------------- bad input
def test_missing_file(tmp_path):
    for loader in (data.load_user_item_file, data.load_movielens, data.load_table):
        with pytest.raises(FileNotFoundError, match="nope.txt"):
            loader(tmp_path / "nope.txt")


def test_empty_file(tmp_path):
    for loader in (data.load_user_item_file, data.load_movielens, data.load_table):
        path = write(tmp_path, "empty.txt", "\n  \n")
        with pytest.raises(InputError, match=r"empty\.txt.*no interactions"):
            loader(path)


def test_too_few_fields(tmp_path):
    path = write(tmp_path, "ui.txt", "1 2\n\n1\n")
    with pytest.raises(InputError, match=r"ui\.txt:3: expected 2 fields separated by whitespace, found 1"):
        data.load_user_item_file(path)


def test_non_integer_and_negative_ids(tmp_path):
    with pytest.raises(InputError, match=r"ui\.txt:2: item id 'x' is not a valid integer"):
        data.load_user_item_file(write(tmp_path, "ui.txt", "1 2\n1 x\n"))
    with pytest.raises(InputError, match=r"neg\.txt:3: user id -4 is negative"):
        data.load_user_item_file(write(tmp_path, "neg.txt", "1 2\n1 3\n-4 3\n"))


def test_wrong_delimiter(tmp_path):
    path = write(tmp_path, "ratings.dat", "1::2::3::4\n1,2,3,4\n")
    with pytest.raises(InputError, match=r"ratings\.dat:2: expected 4 fields separated by '::', found 1 "
                                         r"\(the line seems to use commas\)"):
        data.load_movielens(path)
    path = write(tmp_path, "u.data", "1,2,3,4\n")
    with pytest.raises(InputError, match=r"u\.data:1: expected 4 fields separated by tabs"):
        data.load_movielens(path)


def test_bad_timestamp(tmp_path):
    path = write(tmp_path, "u.data", "1\t2\t3\t4\n1\t2\t3\tyesterday\n")
    with pytest.raises(InputError, match=r"u\.data:2: timestamp 'yesterday' is not a valid number"):
        data.load_movielens(path)


@pytest.mark.parametrize("name, text, message", [
    # a nan timestamp would sort last and silently become the user's test item
    ("u.data", "1\t2\t3\t4\n1\t3\t3\tnan\n", r"u\.data:2: timestamp 'nan' is not a finite number"),
    ("x.csv", "user,item,timestamp\n1,2,5\n1,3,inf\n", r"x\.csv:3: timestamp 'inf' is not a finite"),
    # an empty field is not an item (nor a user)
    ("x.inter", "user_id:token\titem_id:token\n1\t2\n1\t \n", r"x\.inter:3: empty item id"),
    ("ratings.dat", "1::2::5::10\n::3::5::11\n", r"ratings\.dat:2: empty user id"),
    ("u.data", "1\t2\t3\t4\n1\t\t3\t5\n", r"u\.data:2: empty item id"),
    # ids are int64 in user-item files
    ("ids.txt", "1 2\n1 9223372036854775808\n", r"ids\.txt:2: item id 9223372036854775808 is too large"),
    ("ids.txt", "-9223372036854775809 2\n", r"ids\.txt:1: user id -9223372036854775809 is too large"),
])
def test_values_that_are_no_interaction(tmp_path, name, text, message):
    with pytest.raises(InputError, match=message):
        data.load_file(write(tmp_path, name, text))


def test_the_largest_int64_id_is_fine(tmp_path):
    ds = data.load_file(write(tmp_path, "ids.txt", "1 9223372036854775807\n1 2\n"))
    assert ds.raw_item_ids.tolist() == ["9223372036854775807", "2"]


def test_an_unreadable_file_is_one_line(tmp_path, monkeypatch):
    path = write(tmp_path, "x.txt", "1 2\n")
    real = Path.read_text

    def denied(self, *args, **kwargs):                # what a file without read permission does
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)
    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(InputError, match=r"x\.txt: cannot read the data file \(Permission denied\)"):
        data.load_file(path)
    with pytest.raises(InputError, match=r"is a folder, not a data file"):
        data.load_file(tmp_path)


def test_header_without_needed_columns(tmp_path):
    path = write(tmp_path, "x.csv", "customer,product\n1,2\n")
    with pytest.raises(InputError, match=r"x\.csv:1: header columns \['customer', 'product'\].*user column"):
        data.load_table(path)


def test_table_row_with_wrong_field_count(tmp_path):
    path = write(tmp_path, "x.inter", "user_id:token\titem_id:token\n1\t2\n\n1\t2\t3\n")
    with pytest.raises(InputError, match=r"x\.inter:4: expected 2 fields separated by tabs, found 3"):
        data.load_table(path)


def test_unknown_name_and_missing_named_dataset(tmp_path):
    with pytest.raises(InputError, match="synthetic, beauty, ml-1m, ml-100k"):
        data.load_dataset("ml-20m")
    with pytest.raises(FileNotFoundError, match="run: python -m minibert4rec download ml-1m"):
        data.load_dataset("ml-1m", data_dir=tmp_path)


def test_named_datasets_found_in_data_dir(tmp_path):
    (tmp_path / "ml-100k").mkdir()
    write(tmp_path / "ml-100k", "u.data", "1\t2\t3\t4\n1\t3\t3\t5\n1\t4\t3\t6\n")
    assert data.load_dataset("ml-100k", data_dir=tmp_path).n_items == 3
    write(tmp_path, "beauty.txt", "1 2\n1 3\n1 4\n")
    assert data.load_dataset("beauty", data_dir=tmp_path).name == "beauty"


def test_resolve_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIBERT4REC_DATA", str(tmp_path / "env"))
    assert data.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert data.resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("MINIBERT4REC_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data.resolve_data_dir() == tmp_path / "cache" / "minibert4rec"


# --------------------------------------------------------------------------- real data
def test_beauty_statistics():
    if not BEAUTY.is_file():
        pytest.skip(f"real data not available: {BEAUTY}")
    ds = data.load_dataset(str(BEAUTY))
    assert ds.n_users == 40226
    assert ds.n_items == 54542
    assert sum(len(s) for s in ds.sequences) == 353962
