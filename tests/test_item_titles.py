"""Item titles from an item file: RecBole .item, MovieLens u.item and movies.dat."""
import pytest

from minibert4rec.data import (from_interactions, item_labels, item_titles, item_titles_file,
                               load_item_titles)
from minibert4rec.errors import InputError

RECBOLE = ("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
           "1\tToy Story\t1995\tAnimation Children's Comedy\n"
           "2\tGoldenEye\t1995\tAction Adventure Thriller\n"
           "\n"
           "12\tUsual Suspects, The\t1995\tCrime Thriller\n")


def test_recbole_item_file(tmp_path):
    path = tmp_path / "ml-100k.item"
    path.write_text(RECBOLE)
    assert load_item_titles(path) == {"1": "Toy Story", "2": "GoldenEye",
                                      "12": "Usual Suspects, The"}


def test_title_column_found_by_name_not_position(tmp_path):
    path = tmp_path / "x.item"
    path.write_text("class:token_seq\ttitle:token_seq\titem_id:token\nDrama\tHeat\t7\n")
    assert load_item_titles(path) == {"7": "Heat"}


def test_movielens_u_item_in_latin1(tmp_path):
    path = tmp_path / "u.item"
    path.write_bytes("1|Toy Story (1995)|01-Jan-1995||http://x|0|0\n"
                     "2|Misérables, Les (1995)|01-Jan-1995||http://x|0|0\n".encode("latin-1"))
    assert load_item_titles(path) == {"1": "Toy Story (1995)", "2": "Misérables, Les (1995)"}


def test_movielens_movies_dat(tmp_path):
    path = tmp_path / "movies.dat"
    path.write_text("1::Toy Story (1995)::Animation|Children's|Comedy\n")
    assert load_item_titles(path) == {"1": "Toy Story (1995)"}


def test_bad_files_name_the_line(tmp_path):
    path = tmp_path / "a.item"
    path.write_text("item_id:token\tmovie_title:token_seq\n1\tHeat\n2\n")
    with pytest.raises(InputError, match=r"a\.item:3: expected at least 2 fields"):
        load_item_titles(path)
    path.write_text("id\tlabel\n1\tHeat\n")
    with pytest.raises(InputError, match=r"a\.item:1: .*title column"):
        load_item_titles(path)
    with pytest.raises(FileNotFoundError):
        load_item_titles(tmp_path / "missing.item")


def test_companion_file_of_a_named_dataset_or_a_data_file(tmp_path):
    assert item_titles("ml-100k", tmp_path) == {}                  # no file: no titles
    assert item_titles("beauty", tmp_path) == {}
    (tmp_path / "ml-100k.item").write_text(RECBOLE)
    assert item_titles_file("ml-100k", tmp_path) == tmp_path / "ml-100k.item"
    assert item_titles("ml-100k", tmp_path)["2"] == "GoldenEye"
    data = tmp_path / "shop.inter"
    data.write_text("user_id:token\titem_id:token\n")
    assert item_titles(data) == {}
    (tmp_path / "shop.item").write_text("item_id:token\ttitle:token_seq\n5\tSoap\n")
    assert item_titles(data) == {"5": "Soap"}


def test_item_labels_follow_the_vocabulary():
    ds = from_interactions("t", ["u"] * 3 + ["v"] * 2, ["1", "2", "1", "12", "1"])
    titles = {"1": "Toy Story", "12": "Usual Suspects, The"}
    labels = item_labels(ds, titles, width=10)
    assert len(labels) == ds.vocab_size
    assert labels[0] == "[PAD]" and labels[-1] == "[MASK]"
    assert [labels[i] for i in ds.encode_items(["1", "2", "12"])] == ["Toy Story", "2", "Usual Sus…"]
