"""The dataset loaders, on the real files: shapes, dtypes, value ranges, class balance and clear errors."""

from __future__ import annotations

import gzip
import os
import tarfile

import numpy as np
import pytest
from conftest import need

from optax_nowcast.tasks import datasets


@pytest.fixture(scope="module")
def fashion():
  need(os.path.join(datasets.FASHION_MNIST_SYSTEM_DIR, "train-images-idx3-ubyte.gz"),
       "Fashion-MNIST (apt-get install dataset-fashion-mnist)")
  return datasets.load_fashion_mnist()


@pytest.fixture(scope="module")
def cifar(data_dir):
  return datasets.load_cifar10(os.path.join(data_dir, "cifar10"))


def _check_images(d, image_shape, n_train, n_test):
  """Shapes, dtypes, the full 0..255 range and balanced classes of an ImageData."""
  assert d.x_train.shape == (n_train, *image_shape) and d.x_test.shape == (n_test, *image_shape)
  assert d.x_train.dtype == np.uint8 and d.y_train.dtype == np.int32 and d.y_test.dtype == np.int32
  assert d.x_train.min() == 0 and d.x_train.max() == 255
  np.testing.assert_array_equal(np.bincount(d.y_train), np.full(10, n_train // 10))
  np.testing.assert_array_equal(np.bincount(d.y_test), np.full(10, n_test // 10))


def test_fashion_mnist(fashion):
  _check_images(fashion, (28, 28, 1), 60000, 10000)
  # The published normalisation constants are those of this data.
  assert abs(fashion.x_train.mean() / 255 - fashion.mean[0]) < 1e-3
  assert abs(fashion.x_train.std() / 255 - fashion.std[0]) < 1e-3


def test_fashion_mnist_from_env_folder(fashion, monkeypatch, tmp_path):
  monkeypatch.setenv("OPTAX_NOWCAST_FASHION_MNIST", datasets.FASHION_MNIST_SYSTEM_DIR)
  d = datasets.load_fashion_mnist()
  np.testing.assert_array_equal(d.y_test, fashion.y_test)


def test_cifar10(cifar):
  _check_images(cifar, (32, 32, 3), 50000, 10000)
  # Channel order: the per-channel means of CIFAR-10 are R .4914, G .4822, B .4465 (NHWC after the reshape).
  np.testing.assert_allclose(cifar.x_train.mean((0, 1, 2)) / 255, cifar.mean, atol=1e-3)


def test_cifar10_from_extracted_folder(cifar, data_dir, tmp_path):
  with tarfile.open(os.path.join(data_dir, "cifar10", datasets.CIFAR10_TARBALL)) as tar:
    tar.extractall(tmp_path, filter="data")
  d = datasets.load_cifar10(tmp_path / "cifar-10-batches-py")
  np.testing.assert_array_equal(d.x_test, cifar.x_test)
  np.testing.assert_array_equal(d.y_train, cifar.y_train)


def test_tiny_shakespeare(data_dir):
  d = datasets.load_tiny_shakespeare(os.path.join(data_dir, "tiny_shakespeare", "input.txt"))
  assert len(d.vocab) == 65 and d.vocab[0] == "\n"
  assert len(d.train) + len(d.val) == 1_115_394 and abs(len(d.val) - 111_539) <= 1
  assert d.train.dtype == np.int32 and d.train.min() >= 0 and d.train.max() == 64
  assert d.decode(d.train[:14]) == "First Citizen:"
  assert set(np.unique(np.concatenate([d.train, d.val]))) == set(range(65))


def test_missing_files_name_the_file_and_the_fix(tmp_path, monkeypatch):
  monkeypatch.delenv("OPTAX_NOWCAST_DATA_DIR", raising=False)
  with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.gz.*apt-get install dataset-fash"):
    datasets.load_fashion_mnist(tmp_path)
  with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz.*OPTAX_NOWCAST_CIFAR10"):
    datasets.load_cifar10(tmp_path)
  with pytest.raises(FileNotFoundError, match="input.txt.*download=True"):
    datasets.load_tiny_shakespeare(tmp_path)


def test_wrong_files_are_rejected(tmp_path):
  (tmp_path / "input.txt").write_text("not shakespeare")
  with pytest.raises(ValueError, match="not the Tiny Shakespeare corpus"):
    datasets.load_tiny_shakespeare(tmp_path / "input.txt")
  for name in datasets.FASHION_MNIST_FILES:  # valid gzip, wrong IDX header
    with gzip.open(tmp_path / name, "wb") as f:
      f.write((2051).to_bytes(4, "big") + (5).to_bytes(4, "big") + bytes(8))
  with pytest.raises(ValueError, match="IDX header"):
    datasets.load_fashion_mnist(tmp_path)
  with tarfile.open(tmp_path / "bad.tar.gz", "w:gz") as tar:
    tar.add(tmp_path / "input.txt", arcname="cifar-10-batches-py/readme.html")
  with pytest.raises(ValueError, match="not the CIFAR-10 python-version tarball"):
    datasets.load_cifar10(tmp_path / "bad.tar.gz")
