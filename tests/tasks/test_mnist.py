"""MNIST loading: W1's split from the real files, and clear errors for bad files."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from fedmq.tasks import DataConfig, mnist
from fedmq.tasks.mnist import load_mnist, read_csv_sample, read_idx, read_images, read_labels
from tests.needs import require_mnist


def _idx(path: Path, magic: int, array: np.ndarray, dims: tuple[int, ...] | None = None) -> Path:
    dims = array.shape if dims is None else dims
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes(), compresslevel=1))
    return path


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def _labels(n: int) -> np.ndarray:
    return (np.arange(n) % 10).astype(np.uint8)


def _write_t10k(d: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = _images(n, 1), _labels(n)
    _idx(d / mnist.TEST_IMAGES, 2051, images)
    _idx(d / mnist.TEST_LABELS, 2049, labels)
    return images, labels


def _write_csv(path: Path, rows: np.ndarray) -> None:
    text = "\n".join(",".join(str(v) for v in row) for row in rows) + "\n"
    path.write_bytes(gzip.compress(text.encode()))


@pytest.fixture(scope="module")
def real_dir() -> Path:
    return require_mnist()


def test_w1_split_from_real_files(real_dir: Path) -> None:
    data = load_mnist(DataConfig(data_dir=real_dir))
    assert data.x_train.shape == (10000, 784) and data.x_train.dtype == np.float32
    assert data.x_test.shape == (5000, 784) and data.y_test.dtype == np.int64
    csv_pixels, csv_labels = read_csv_sample(real_dir / mnist.CSV_SAMPLE)
    t10k = read_images(real_dir / mnist.TEST_IMAGES)
    t10k_labels = read_labels(real_dir / mnist.TEST_LABELS, 10000)
    assert np.array_equal(data.x_train[:5000], csv_pixels / np.float32(255.0))
    assert np.array_equal(data.x_train[5000:], t10k[:5000] / np.float32(255.0))
    assert np.array_equal(data.y_train, np.concatenate([csv_labels, t10k_labels[:5000]]))
    assert np.array_equal(data.x_test, t10k[5000:] / np.float32(255.0))
    assert np.array_equal(data.y_test, t10k_labels[5000:])
    assert np.bincount(csv_labels).tolist() == [500] * 10
    assert float(data.x_train.max()) == 1.0 and float(data.x_train.min()) == 0.0


def test_default_dir_and_env(
    real_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(mnist.MNIST_ENV, raising=False)
    assert mnist.find_mnist_dir(None) == real_dir
    monkeypatch.setenv(mnist.MNIST_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"\\${mnist.MNIST_ENV}") as info:
        mnist.find_mnist_dir(None)
    assert str(tmp_path) in str(info.value) and mnist.TEST_IMAGES in str(info.value)


def test_missing_dir_names_what_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(DataConfig(data_dir=tmp_path / "nowhere"))
    message = str(info.value)
    assert mnist.TEST_IMAGES in message and "nowhere" in message and mnist.MNIST_ENV in message


def test_fallback_split_from_csv_and_t10k(tmp_path: Path) -> None:
    t10k, t10k_labels = _write_t10k(tmp_path, 5003)
    rows = np.concatenate([np.full((3, 784), 255), np.array([[7], [8], [9]])], axis=1)
    _write_csv(tmp_path / mnist.CSV_SAMPLE, rows)
    data = load_mnist(DataConfig(data_dir=tmp_path))
    assert data.x_train.shape == (5003, 784) and data.x_test.shape == (3, 784)
    assert data.y_train[:3].tolist() == [7, 8, 9] and np.all(data.x_train[:3] == 1.0)
    assert np.array_equal(data.x_train[3:], t10k[:5000].reshape(5000, 784) / np.float32(255.0))
    assert np.array_equal(data.y_test, t10k_labels[5000:].astype(np.int64))


def test_full_official_train_set_wins(tmp_path: Path) -> None:
    t10k, _ = _write_t10k(tmp_path, 12)
    train = _images(20, 2)
    _idx(tmp_path / mnist.TRAIN_IMAGES, 2051, train)
    _idx(tmp_path / mnist.TRAIN_LABELS, 2049, _labels(20))
    data = load_mnist(DataConfig(data_dir=tmp_path))
    assert np.array_equal(data.x_train, train.reshape(20, 784) / np.float32(255.0))
    assert np.array_equal(data.x_test, t10k.reshape(12, 784) / np.float32(255.0))
    assert data.y_train.dtype == np.int64 and data.y_train.tolist() == _labels(20).tolist()


def test_half_an_official_train_set_is_an_error(tmp_path: Path) -> None:
    _write_t10k(tmp_path, 12)
    _idx(tmp_path / mnist.TRAIN_IMAGES, 2051, _images(20, 2))
    with pytest.raises(FileNotFoundError, match=mnist.TRAIN_LABELS):
        load_mnist(DataConfig(data_dir=tmp_path))


def test_no_training_files(tmp_path: Path) -> None:
    _write_t10k(tmp_path, 12)
    with pytest.raises(FileNotFoundError, match=mnist.CSV_SAMPLE):
        load_mnist(DataConfig(data_dir=tmp_path))


def test_bad_magic(tmp_path: Path) -> None:
    path = _idx(tmp_path / "x.gz", 2049, _images(2, 0), dims=(2, 28, 28))
    with pytest.raises(ValueError, match="magic number 2049, expected 2051"):
        read_images(path)


def test_length_disagrees_with_header(tmp_path: Path) -> None:
    path = _idx(tmp_path / "x.gz", 2051, _images(2, 0), dims=(3, 28, 28))
    with pytest.raises(ValueError, match=r"header dims \(3, 28, 28\)"):
        read_idx(path, 2051)


def test_not_gzip(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(b"\x00\x00\x08\x03 plainly not gzip")
    with pytest.raises(ValueError, match="not a readable gzip file"):
        read_idx(path, 2051)


def test_truncated_gzip(tmp_path: Path) -> None:
    path = _idx(tmp_path / "x.gz", 2051, _images(4, 0))
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(ValueError, match=str(path)):
        read_idx(path, 2051)


def test_images_must_be_28_by_28(tmp_path: Path) -> None:
    path = _idx(tmp_path / "x.gz", 2051, np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"\(8, 8\), expected \(28, 28\)"):
        read_images(path)


def test_labels_count_and_range(tmp_path: Path) -> None:
    path = _idx(tmp_path / "l.gz", 2049, _labels(5))
    with pytest.raises(ValueError, match="5 labels for 6 images"):
        read_labels(path, 6)
    bad = _idx(tmp_path / "b.gz", 2049, np.array([1, 10], np.uint8))
    with pytest.raises(ValueError, match=r"label 10 outside 0\.\.9"):
        read_labels(bad, 2)


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ("1,2,3\n", "3 columns, expected 785"),
        (",".join(["0"] * 784 + ["10"]) + "\n", "labels outside"),
        (",".join(["256"] * 784 + ["1"]) + "\n", "pixel values outside"),
        (",".join(["a"] * 785) + "\n", "not a CSV of integers"),
        (",".join(["0"] * 785) + "\n" + ",".join(["0"] * 784) + "\n", "not a CSV of integers"),
    ],
)
def test_bad_csv(tmp_path: Path, rows: str, match: str) -> None:
    path = tmp_path / "s.csv.gz"
    path.write_bytes(gzip.compress(rows.encode()))
    with pytest.raises(ValueError, match=match):
        read_csv_sample(path)


def test_checksum_mismatch_is_caught_unless_disabled(tmp_path: Path) -> None:
    _write_t10k(tmp_path, 12)
    _idx(tmp_path / mnist.TRAIN_IMAGES, 2051, _images(20, 2))
    _idx(tmp_path / mnist.TRAIN_LABELS, 2049, _labels(20))
    good = hashlib.sha256((tmp_path / mnist.TEST_LABELS).read_bytes()).hexdigest()
    (tmp_path / mnist.CHECKSUMS).write_text(
        f"{good}  {mnist.TEST_LABELS}\n{'0' * 64}  {mnist.TEST_IMAGES}\n"
    )
    with pytest.raises(ValueError, match=f"{mnist.TEST_IMAGES}: SHA256 .* does not match"):
        load_mnist(DataConfig(data_dir=tmp_path))
    assert load_mnist(DataConfig(data_dir=tmp_path, verify_checksums=False)).x_train.shape == (
        20,
        784,
    )


def test_bad_checksum_file(tmp_path: Path) -> None:
    (tmp_path / mnist.CHECKSUMS).write_text("not a checksum line\n")
    with pytest.raises(ValueError, match=r"SHA256SUMS:1"):
        mnist.verify_checksums(tmp_path, (mnist.TEST_IMAGES,))


def test_real_checksums_pass_and_one_flipped_byte_fails(real_dir: Path, tmp_path: Path) -> None:
    names = (mnist.TEST_IMAGES, mnist.TEST_LABELS, mnist.CSV_SAMPLE)
    mnist.verify_checksums(real_dir, names)  # the shipped files match their SHA256SUMS
    for name in (mnist.CHECKSUMS, mnist.TEST_LABELS):
        (tmp_path / name).write_bytes((real_dir / name).read_bytes())
    labels = bytearray((tmp_path / mnist.TEST_LABELS).read_bytes())
    labels[-1] ^= 0xFF
    (tmp_path / mnist.TEST_LABELS).write_bytes(bytes(labels))
    with pytest.raises(ValueError, match="does not match"):
        mnist.verify_checksums(tmp_path, (mnist.TEST_LABELS,))
