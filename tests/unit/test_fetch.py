"""The fetcher: synthetic default, downloads from a local HTTP server, directory mode, CLI."""

import hashlib
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import pytest

from lhccnn import fetch, synthetic

ROOT = Path(__file__).resolve().parents[2]
SIZES = ["--n-train", "64", "--n-val", "32", "--n-test", "32"]


# --- a local HTTP server with Range support and a switch to cut the connection --------------


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        srv = self.server
        name = self.path.lstrip("/")
        srv.requests.append((name, self.headers.get("Range")))
        if name not in srv.files:
            self.send_error(404)
            return
        data, start = srv.files[name], 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if name in srv.cut_once:
            srv.cut_once.discard(name)
            self.wfile.write(body[: len(body) // 2])  # then the connection closes (HTTP/1.0)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.files, srv.requests, srv.cut_once = {}, [], set()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/"
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("src")
    for i, name in enumerate(fetch.FILES):
        synthetic.write_file(d / name, 16, i, progress=False)
    return d


def _bytes(d):
    return {name: (d / name).read_bytes() for name in fetch.FILES}


def _sha(data):
    return hashlib.sha256(data).hexdigest()


# --- download --------------------------------------------------------------------------------


def test_download_verifies_a_matching_hash(server, dataset_dir, tmp_path):
    server.files = _bytes(dataset_dir)
    data = server.files["val.h5"]
    out = fetch.download(
        server.url + "val.h5", tmp_path / "val.h5", sha256=_sha(data), retries=0, progress=False
    )
    assert out.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["val.h5"]


def test_download_with_wrong_hash_fails_and_leaves_no_file(server, dataset_dir, tmp_path):
    server.files = _bytes(dataset_dir)
    with pytest.raises(fetch.FetchError, match="sha256 .* does not match"):
        fetch.download(
            server.url + "val.h5", tmp_path / "val.h5", sha256="0" * 64, retries=0, progress=False
        )
    assert list(tmp_path.iterdir()) == []


def test_download_resumes_with_range_after_a_cut_connection(server, dataset_dir, tmp_path):
    server.files = _bytes(dataset_dir)
    server.cut_once = {"train.h5"}
    data = server.files["train.h5"]
    fetch.download(
        server.url + "train.h5",
        tmp_path / "train.h5",
        sha256=_sha(data),
        retries=2,
        backoff=0.01,
        timeout=5,
        progress=False,
    )
    assert (tmp_path / "train.h5").read_bytes() == data
    assert [r[1] for r in server.requests] == [None, f"bytes={len(data) // 2}-"]


def test_download_404_names_the_url(server, tmp_path):
    url = server.url + "nope.h5"
    with pytest.raises(fetch.FetchError, match=f"{url}: HTTP 404"):
        fetch.download(url, tmp_path / "nope.h5", retries=3, backoff=0.01, progress=False)
    assert len(server.requests) == 1  # a 404 is not retried
    assert list(tmp_path.iterdir()) == []


def test_cli_download_from_base_url_warns_with_the_hash(server, dataset_dir, tmp_path, capsys):
    server.files = _bytes(dataset_dir)
    rc = fetch.main(
        [
            "--source",
            "download",
            "--base-url",
            server.url,
            "--out",
            str(tmp_path),
            "--quiet",
            "--backoff",
            "0.01",
        ]
    )
    assert rc == 0
    for name, data in server.files.items():
        assert (tmp_path / name).read_bytes() == data
    err = capsys.readouterr().err
    assert f"sha256={_sha(server.files['test.h5'])}" in err  # printed for recording


def test_cli_download_with_registered_hash_mismatch_fails(
    server, dataset_dir, tmp_path, monkeypatch, capsys
):
    server.files = _bytes(dataset_dir)
    bad = {k: dict(v, sha256="f" * 64) for k, v in fetch.REGISTRY.items()}
    monkeypatch.setattr(fetch, "REGISTRY", bad)
    rc = fetch.main(
        ["--source", "download", "--base-url", server.url, "--out", str(tmp_path), "--quiet"]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "error:" in err and "train.h5" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_cli_download_404_is_one_clear_line(server, tmp_path, capsys):
    rc = fetch.main(
        ["--source", "download", "--base-url", server.url, "--out", str(tmp_path), "--quiet"]
    )
    assert rc == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {server.url}train.h5: HTTP 404 Not Found (expected the file "
        f"train.h5; check the URL or --base-url)"
    )


# --- directory mode --------------------------------------------------------------------------


def test_dir_mode_links_the_files_of_a_valid_directory(dataset_dir, tmp_path):
    out = tmp_path / "out"
    assert fetch.main(["--source", str(dataset_dir), "--out", str(out), "--quiet"]) == 0
    for name in fetch.FILES:
        assert (out / name).is_symlink()
        assert (out / name).resolve() == (dataset_dir / name).resolve()
    assert fetch.main(["--source", str(dataset_dir), "--out", str(out), "--quiet"]) == 0


def test_dir_mode_rejects_missing_or_broken_files(dataset_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.h5").symlink_to(dataset_dir / "train.h5")
    (bad / "test.h5").write_bytes(b"not hdf5")
    out = tmp_path / "out"
    assert fetch.main(["--source", str(bad), "--out", str(out), "--quiet"]) == 1
    assert "val.h5: no such file" in capsys.readouterr().err
    (bad / "val.h5").symlink_to(dataset_dir / "val.h5")
    assert fetch.main(["--source", str(bad), "--out", str(out), "--quiet"]) == 1
    assert "test.h5: cannot be read as HDF5" in capsys.readouterr().err
    with h5py.File(bad / "wrong.h5", "w") as f:
        f.create_dataset("all_events/hist", data=[[1.0]])
    os.replace(bad / "wrong.h5", bad / "test.h5")
    assert fetch.main(["--source", str(bad), "--out", str(out), "--quiet"]) == 1
    assert "test.h5: missing dataset 'all_events/y'" in capsys.readouterr().err
    assert not out.exists() or list(out.iterdir()) == []


# --- synthetic (default) mode ----------------------------------------------------------------


def test_default_writes_synthetic_files_then_skips_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LHCCNN_DATA_DIR", str(tmp_path / "d"))
    assert fetch.main(SIZES + ["--quiet"]) == 0
    files = [tmp_path / "d" / n for n in fetch.FILES]
    with h5py.File(files[0], "r") as f:
        assert f["all_events/hist"].shape == (64, 64, 64)
        assert f.attrs["seed"] == synthetic.split_seed(0, "train")
    mtimes = [p.stat().st_mtime_ns for p in files]
    capsys.readouterr()
    assert fetch.main(SIZES) == 0
    assert "train.h5: up to date (64 events, seed 0), skipping" in capsys.readouterr().err
    assert [p.stat().st_mtime_ns for p in files] == mtimes
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == sorted(fetch.FILES)


def test_existing_files_of_another_seed_need_force(tmp_path, capsys):
    args = SIZES + ["--out", str(tmp_path), "--quiet"]
    assert fetch.main(args) == 0
    assert fetch.main(args + ["--seed", "5"]) == 1
    assert "seed=0 (want 5)" in capsys.readouterr().err
    assert fetch.main(args + ["--seed", "5", "--force"]) == 0
    with h5py.File(tmp_path / "train.h5", "r") as f:
        assert f.attrs["seed"] == 5


def test_synthetic_only_options_are_rejected_for_other_sources(tmp_path, capsys):
    assert fetch.main(["--source", "download", "--n-train", "5", "--out", str(tmp_path)]) == 1
    assert "--n-train only apply to --source synthetic" in capsys.readouterr().err


def test_script_help_runs_from_anywhere(tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "data" / "fetch.py"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0
    assert "--source" in r.stdout and "--base-url" in r.stdout


def test_an_output_folder_that_cannot_be_created_is_one_clear_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert fetch.main(["--out", str(blocker / "data"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"error: {blocker / 'data'}: cannot create the output folder" in err
    assert "Traceback" not in err
