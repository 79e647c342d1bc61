"""Tests for minibert4rec.download, against a local HTTP server and file:// URLs.

Nothing here touches the network: the fixtures are tiny files made in tmp_path.
"""
import functools
import hashlib
import http.server
import os
import stat
import threading
import zipfile

import pytest

from minibert4rec import download as dl
from minibert4rec.errors import InputError

CONTENT = b"1 1\n1 2\n1 3\n2 2\n2 3\n2 1\n"
SHA = hashlib.sha256(CONTENT).hexdigest()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class TruncatingHandler(QuietHandler):
    """Promises 1000 bytes but sends 10, then closes: a broken download."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"0123456789")


def serve(directory, handler=QuietHandler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def http_dir(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "beauty.txt").write_bytes(CONTENT)
    server, base = serve(served)
    yield served, base
    server.shutdown()
    server.server_close()


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if ".part-" in p.name or ".unpack-" in p.name)


def test_http_download_verified_and_atomic(http_dir, tmp_path):
    _, base = http_dir
    out = tmp_path / "data"
    path = dl.download("beauty", data_dir=out, url=f"{base}/beauty.txt", sha256=SHA, progress=False)
    assert path == out / "beauty.txt"
    assert path.read_bytes() == CONTENT
    assert leftovers(out) == []


def test_checksum_mismatch_leaves_nothing(http_dir, tmp_path):
    _, base = http_dir
    out = tmp_path / "data"
    with pytest.raises(InputError, match=f"checksum mismatch: expected sha256 {'0' * 64}, got {SHA}"):
        dl.download("beauty", data_dir=out, url=f"{base}/beauty.txt", sha256="0" * 64, progress=False)
    assert list(out.iterdir()) == []


def test_broken_transfer_leaves_nothing(tmp_path):
    server, base = serve(tmp_path, TruncatingHandler)
    out = tmp_path / "data"
    try:
        with pytest.raises(InputError, match="download failed"):
            dl.download("beauty", data_dir=out, url=f"{base}/beauty.txt", sha256=SHA, progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert list(out.iterdir()) == []


def test_interrupt_removes_temp_file(tmp_path, monkeypatch):
    src = tmp_path / "src.txt"
    src.write_bytes(CONTENT)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dl, "_stream", interrupted)
    out = tmp_path / "data"
    with pytest.raises(KeyboardInterrupt):
        dl.download("beauty", data_dir=out, url=src.as_uri(), sha256=SHA, progress=False)
    assert list(out.iterdir()) == []


def test_file_url_and_skip_when_present(tmp_path, monkeypatch):
    src = tmp_path / "src.txt"
    src.write_bytes(CONTENT)
    out = tmp_path / "data"
    path = dl.download("beauty", data_dir=out, url=src.as_uri(), sha256=SHA, progress=True)
    assert path.read_bytes() == CONTENT

    def no_network(*args, **kwargs):
        raise AssertionError("should not download again")

    monkeypatch.setattr(dl, "fetch", no_network)
    assert dl.download("beauty", data_dir=out, url=src.as_uri(), sha256=SHA, progress=False) == path


def test_corrupt_existing_file_is_replaced(tmp_path):
    src = tmp_path / "src.txt"
    src.write_bytes(CONTENT)
    out = tmp_path / "data"
    out.mkdir()
    (out / "beauty.txt").write_bytes(b"half a fi")
    dl.download("beauty", data_dir=out, url=src.as_uri(), sha256=SHA, progress=False)
    assert (out / "beauty.txt").read_bytes() == CONTENT


def test_zip_is_unpacked(http_dir, tmp_path):
    served, base = http_dir
    archive = served / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-100k/u.data", "1\t2\t5\t10\n1\t3\t4\t20\n1\t4\t4\t30\n")
        zf.writestr("ml-100k/README", "test fixture")
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    out = tmp_path / "data"
    path = dl.download("ml-100k", data_dir=out, url=f"{base}/ml-100k.zip", sha256=sha, progress=False)
    assert path == out / "ml-100k" / "u.data"
    assert path.read_text().startswith("1\t2\t5\t10")
    assert (out / "ml-100k.zip").is_file() and leftovers(out) == []
    from minibert4rec import data
    assert data.load_dataset("ml-100k", data_dir=out).n_items == 3


def test_unsafe_zip_rejected(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../escape.txt", "x")
    out = tmp_path / "data"
    with pytest.raises(InputError, match="unsafe path"):
        dl.download("ml-1m", data_dir=out, url=archive.as_uri(),
                    sha256=hashlib.sha256(archive.read_bytes()).hexdigest(), progress=False)
    assert not (out / "ml-1m").exists() and leftovers(out) == []
    assert not (tmp_path / "escape.txt").exists()


def test_unknown_name():
    with pytest.raises(InputError, match="beauty, ml-1m, ml-100k"):
        dl.download("netflix", progress=False)


def test_registry_pins_sha256():
    assert set(dl.DATASETS) == {"beauty", "ml-1m", "ml-100k"}
    for spec in dl.DATASETS.values():
        assert len(spec["sha256"]) == 64 and spec["url"].startswith("https://")


def test_downloaded_files_get_the_usual_permissions(tmp_path):
    # a temporary file is private (0600); the data file must not stay so: 0666 less the umask
    src = tmp_path / "src.txt"
    src.write_bytes(CONTENT)
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-100k/u.data", "1\t2\t5\t10\n1\t3\t4\t20\n1\t4\t4\t30\n")
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    old = os.umask(0o022)
    try:
        out = tmp_path / "data"
        path = dl.download("beauty", data_dir=out, url=src.as_uri(), sha256=SHA, progress=False)
        dl.download("ml-100k", data_dir=out, url=archive.as_uri(), sha256=sha, progress=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((out / "ml-100k.zip").stat().st_mode) == 0o644
    assert stat.S_IMODE((out / "ml-100k").stat().st_mode) == 0o755       # not mkdtemp's 0700


def test_leftovers_of_a_killed_download_are_removed_by_the_next(tmp_path):
    # kill -9 leaves NAME.part-XXXX (and an unpack folder) behind: the next download clears
    # them, but not a temporary file another download is still writing (it holds a lock)
    import fcntl
    src = tmp_path / "src.txt"
    src.write_bytes(CONTENT)
    out = tmp_path / "data"
    out.mkdir()
    (out / "beauty.txt.part-dead1").write_bytes(b"half")
    (out / "ml-1m.unpack-dead2").mkdir()
    (out / "ml-1m.unpack-dead2" / "ratings.dat").write_text("1::1::5::1\n")
    busy = out / "beauty.txt.part-busy"
    with open(busy, "wb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)                     # as a running download holds it
        dl.download("beauty", data_dir=out, url=src.as_uri(), sha256=SHA, progress=False)
        assert leftovers(out) == ["beauty.txt.part-busy", "ml-1m.unpack-dead2"]
    archive = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-1m/ratings.dat", "1::1::5::1\n1::2::5::2\n1::3::5::3\n")
    dl.download("ml-1m", data_dir=out, url=archive.as_uri(),
                sha256=hashlib.sha256(archive.read_bytes()).hexdigest(), progress=False)
    assert leftovers(out) == ["beauty.txt.part-busy"]     # its writer is gone, the lock too:
    src.write_bytes(CONTENT)                               # the next beauty download removes it
    (out / "beauty.txt").unlink()
    dl.download("beauty", data_dir=out, url=src.as_uri(), sha256=SHA, progress=False)
    assert leftovers(out) == []


def test_a_read_only_data_folder_is_one_line(tmp_path, monkeypatch, capsys):
    from minibert4rec import cli

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(dl.tempfile, "mkstemp", denied)
    assert cli.main(["download", "beauty", "--data-dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path}: cannot write: Permission denied (the folder is read-only " \
                  f"for you: choose another one)"
