"""Real MNIST from local files: IDX (gzip) and the 5,000-row CSV sample.

Invariants: numpy and the standard library only; never downloads; every file
is validated (gzip, magic number, dims, length, value ranges, and SHA256SUMS
where present) and a bad one raises ``ValueError`` naming the file.

Split (DESIGN.md, "Workload W1"): with the official 60k training files present,
train on them and test on the official 10k. Otherwise train (10,000) = the CSV
rows in file order, then t10k images 0..4999; test (5,000) = t10k 5000..9999.
Pixels are ``uint8 / 255`` float32 flattened to 784; labels int64.

References: Y. LeCun et al., "THE MNIST DATABASE of handwritten digits" (the
IDX format: big-endian int32 magic ``0x0000 08 ndim``, then ndim int32 sizes).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fedmq.tasks.spec import DataConfig, Dataset

#: environment variable naming the MNIST directory when no data_dir is given
MNIST_ENV = "FEDMQ_MNIST_DIR"
#: where a checkout finds the shared offline copy: ``<repo>/../shared/data/mnist``
REPO_MNIST_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"

TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
CSV_SAMPLE = "mnist_5k.csv.gz"
CHECKSUMS = "SHA256SUMS"

IMAGE_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dims
LABEL_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dim
SIDE = 28
PIXELS = SIDE * SIDE
#: the held-out half of t10k starts here when the official train set is absent
T10K_SPLIT = 5000


def find_mnist_dir(data_dir: Path | None) -> Path:
    """The directory to read: ``data_dir``, else ``$FEDMQ_MNIST_DIR``, else the repo's.

    Raises:
        FileNotFoundError: naming the directory and files looked for.
    """
    if data_dir is not None:
        where, how = Path(data_dir), "data_dir"
    elif os.environ.get(MNIST_ENV):
        where, how = Path(os.environ[MNIST_ENV]), f"${MNIST_ENV}"
    else:
        where, how = REPO_MNIST_DIR, f"the default (no data_dir, ${MNIST_ENV} unset)"
    if not (where / TEST_IMAGES).is_file() or not (where / TEST_LABELS).is_file():
        raise FileNotFoundError(
            f"MNIST not found: looked for {TEST_IMAGES} and {TEST_LABELS} "
            f"(plus {CSV_SAMPLE} or {TRAIN_IMAGES}/{TRAIN_LABELS}) in {where}, from {how}; "
            f"pass a data dir or set {MNIST_ENV}"
        )
    return where


def _gunzip(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: not a readable gzip file ({exc})") from exc


def read_idx(path: Path, magic: int) -> npt.NDArray[np.uint8]:
    """One gzipped IDX file of unsigned bytes, shaped by its header.

    Raises:
        ValueError: for a bad gzip stream, a magic number other than ``magic``,
            or a byte count that disagrees with the header's dims.
    """
    data = _gunzip(path)
    if len(data) < 4:
        raise ValueError(f"{path}: {len(data)} bytes is too short for an IDX header")
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        raise ValueError(f"{path}: IDX magic number {got}, expected {magic}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise ValueError(f"{path}: {len(data)} bytes, but header dims {dims} need {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_images(path: Path) -> npt.NDArray[np.uint8]:
    """IDX images as ``(n, 784)`` uint8.

    Raises:
        ValueError: as :func:`read_idx`, or for images that are not 28x28.
    """
    images = read_idx(path, IMAGE_MAGIC)
    if images.shape[1:] != (SIDE, SIDE):
        raise ValueError(f"{path}: images are {images.shape[1:]}, expected (28, 28)")
    return images.reshape(len(images), PIXELS)


def read_labels(path: Path, count: int) -> npt.NDArray[np.int64]:
    """IDX labels as int64, checked against the image ``count`` and the range 0..9.

    Raises:
        ValueError: as :func:`read_idx`, or for a wrong count or a label above 9.
    """
    labels = read_idx(path, LABEL_MAGIC)
    if len(labels) != count:
        raise ValueError(f"{path}: {len(labels)} labels for {count} images")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{path}: label {labels.max()} outside 0..9")
    return labels.astype(np.int64)


def read_csv_sample(path: Path) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """The CSV sample: rows of 784 pixels (0..255) then the label (0..9), no header.

    Raises:
        ValueError: for a bad gzip stream, non-integer cells, ragged rows, or
            values out of range.
    """
    text = _gunzip(path).decode("ascii", errors="replace")
    try:
        table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as exc:
        raise ValueError(f"{path}: not a CSV of integers ({exc})") from exc
    if table.shape[1] != PIXELS + 1:
        raise ValueError(f"{path}: {table.shape[1]} columns, expected 785 (784 pixels, label)")
    pixels, labels = table[:, :PIXELS], table[:, PIXELS]
    if table.size and (pixels.min() < 0 or pixels.max() > 255):
        raise ValueError(f"{path}: pixel values outside 0..255")
    if table.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels outside 0..9")
    return pixels.astype(np.uint8), labels


def verify_checksums(directory: Path, names: tuple[str, ...]) -> None:
    """Check each of ``names`` listed in ``directory/SHA256SUMS``; unlisted files pass.

    Raises:
        ValueError: for a digest mismatch or an unreadable SHA256SUMS line.
    """
    sums_path = directory / CHECKSUMS
    if not sums_path.is_file():
        return
    listed: dict[str, str] = {}
    for lineno, line in enumerate(sums_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        digest, _, name = line.partition(" ")
        if len(digest) != 64 or not name.strip():
            raise ValueError(f"{sums_path}:{lineno}: expected '<sha256>  <file>', got {line!r}")
        listed[name.strip().lstrip("*")] = digest.lower()
    for name in names:
        want = listed.get(name)
        if want is None:
            continue
        got = hashlib.sha256((directory / name).read_bytes()).hexdigest()
        if got != want:
            raise ValueError(
                f"{directory / name}: SHA256 {got} does not match {CHECKSUMS} ({want})"
            )


def _scale(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    return pixels.astype(np.float32) / np.float32(255.0)


def load_mnist(cfg: DataConfig) -> Dataset:
    """MNIST as a :class:`Dataset`, split as this module's docstring says.

    Raises:
        FileNotFoundError: when the directory or a needed file is missing.
        ValueError: for a corrupt file or a checksum mismatch.
    """
    where = find_mnist_dir(cfg.data_dir)
    full = (where / TRAIN_IMAGES).is_file(), (where / TRAIN_LABELS).is_file()
    if any(full) and not all(full):
        missing = TRAIN_LABELS if full[0] else TRAIN_IMAGES
        raise FileNotFoundError(f"{where}: the official train set needs {missing} too")
    names = (TRAIN_IMAGES, TRAIN_LABELS) if all(full) else (CSV_SAMPLE,)
    if not all(full) and not (where / CSV_SAMPLE).is_file():
        raise FileNotFoundError(
            f"{where}: neither {CSV_SAMPLE} nor {TRAIN_IMAGES}/{TRAIN_LABELS} found for training"
        )
    if cfg.verify_checksums:
        verify_checksums(where, (TEST_IMAGES, TEST_LABELS, *names))
    t10k = read_images(where / TEST_IMAGES)
    t10k_labels = read_labels(where / TEST_LABELS, len(t10k))
    if all(full):
        train = read_images(where / TRAIN_IMAGES)
        train_labels = read_labels(where / TRAIN_LABELS, len(train))
        return Dataset(_scale(train), train_labels, _scale(t10k), t10k_labels)
    if len(t10k) <= T10K_SPLIT:
        raise ValueError(f"{where / TEST_IMAGES}: {len(t10k)} images, need more than {T10K_SPLIT}")
    csv_pixels, csv_labels = read_csv_sample(where / CSV_SAMPLE)
    return Dataset(
        x_train=_scale(np.concatenate([csv_pixels, t10k[:T10K_SPLIT]])),
        y_train=np.concatenate([csv_labels, t10k_labels[:T10K_SPLIT]]),
        x_test=_scale(t10k[T10K_SPLIT:]),
        y_test=t10k_labels[T10K_SPLIT:],
    )
