"""Loaders for the benchmark datasets: Fashion-MNIST, CIFAR-10, Tiny Shakespeare (and digits, in ``digits``).

Every loader reads the canonical files, checks shapes, dtypes, value ranges and class counts, and raises a
``FileNotFoundError`` that names the missing file and the ways to get it. None of them ever falls back to
random data. Where the files are looked for, first match wins:

1. the ``path`` / ``data_dir`` argument;
2. an environment variable: ``OPTAX_NOWCAST_FASHION_MNIST``, ``OPTAX_NOWCAST_CIFAR10``,
   ``OPTAX_NOWCAST_SHAKESPEARE`` (a file or folder for that dataset), or ``OPTAX_NOWCAST_DATA_DIR`` (a folder
   holding ``fashion-mnist/``, ``cifar10/`` and ``tiny_shakespeare/``);
3. a system location (Fashion-MNIST: ``/usr/share/datasets/fashion-mnist`` from the Debian package
   ``dataset-fashion-mnist``);
4. the cache folder ``$OPTAX_NOWCAST_CACHE`` (default ``~/.cache/optax_nowcast``), where ``download=True``
   puts the canonical files, checked against their published MD5 sums, on a machine with internet.

Where no canonical files are found, a folder made by :func:`pack` is read instead: ``packed.npz`` in a
dataset's folder (``fashion-mnist/``, ``cifar10/``) holds a class-balanced subset of the canonical release
(its shapes, dtypes and class counts checked), small enough to carry to a machine that has no copy
(``python -m optax_nowcast.metatrain pack-data --out DIR``, then ``OPTAX_NOWCAST_DATA_DIR=DIR``).

>>> import os
>>> os.path.basename(default_cache_dir())
'optax_nowcast'
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import tarfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_FILES = {  # file name -> canonical MD5 of the .gz (github.com/zalandoresearch/fashion-mnist)
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_LENGTH = 1_115_394
SHAKESPEARE_VOCAB = 65

# Per-channel statistics used for normalisation (the usual published values).
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class ImageData(NamedTuple):
  """Image classification data: uint8 NHWC images, int32 labels; ``test`` is the validation split."""

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  mean: tuple[float, ...]
  std: tuple[float, ...]
  num_classes: int = 10


class TextData(NamedTuple):
  """A character-level corpus encoded as int32 token ids, split into train and validation."""

  train: np.ndarray
  val: np.ndarray
  vocab: str

  def decode(self, ids: Sequence[int]) -> str:
    return "".join(self.vocab[int(i)] for i in ids)


def default_cache_dir() -> Path:
  return Path(os.environ.get("OPTAX_NOWCAST_CACHE", Path.home() / ".cache" / "optax_nowcast"))


def _candidates(explicit: str | os.PathLike | None, env: str, subdir: str,
                system: Sequence[str] = ()) -> list[Path]:
  if explicit is not None:
    return [Path(explicit)]
  out = []
  if os.environ.get(env):
    out.append(Path(os.environ[env]))
  if os.environ.get("OPTAX_NOWCAST_DATA_DIR"):
    out.append(Path(os.environ["OPTAX_NOWCAST_DATA_DIR"]) / subdir)
  out.extend(Path(s) for s in system)
  out.append(default_cache_dir() / subdir)
  return out


def _md5(path: Path) -> str:
  h = hashlib.md5()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _download(url: str, dest: Path, md5: str | None) -> None:
  dest.parent.mkdir(parents=True, exist_ok=True)
  tmp = dest.with_suffix(dest.suffix + ".part")
  with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:  # noqa: S310 - fixed https/http URLs
    while block := r.read(1 << 20):
      f.write(block)
  if md5 is not None and (got := _md5(tmp)) != md5:
    tmp.unlink()
    raise OSError(f"Downloaded {url} has MD5 {got}, expected {md5}; the file was removed, try again.")
  tmp.replace(dest)


def _check_labels(y: np.ndarray, num_classes: int, per_class: int, what: str) -> None:
  counts = np.bincount(y, minlength=num_classes)
  if len(counts) != num_classes or not np.all(counts == per_class):
    raise ValueError(f"{what}: expected {per_class} examples of each of {num_classes} classes, "
                     f"got counts {counts.tolist()}; the file is corrupt or not the canonical release.")


# ------------------------------------------------------------------------------------- packed subsets

PACKED = "packed.npz"


def _balanced(y: np.ndarray, per_class: int, num_classes: int = 10) -> np.ndarray:
  """The first ``per_class`` indices of every class, in file order."""
  idx = [np.flatnonzero(y == c)[:per_class] for c in range(num_classes)]
  if any(len(i) < per_class for i in idx):
    raise ValueError(f"fewer than {per_class} examples in some class.")
  return np.sort(np.concatenate(idx))


def pack(out_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None, fm_train: int = 15_000,
         cifar_train: int = 4_000, test: int = 2_000) -> dict[str, dict[str, int]]:
  """Writes class-balanced subsets of Fashion-MNIST and CIFAR-10 (``<out>/<dataset>/packed.npz``, the first
  ``n / 10`` examples of each class of each split, compressed) and a copy of Tiny Shakespeare
  (``<out>/tiny_shakespeare/input.txt``), read from the canonical files (found as the loaders find them,
  ``data_dir`` first); returns the bytes written per file, also in ``<out>/manifest.json``.
  """
  out = Path(out_dir)
  written: dict[str, dict[str, int]] = {}

  def source(name: str) -> Path | None:
    return Path(data_dir) / name if data_dir and (Path(data_dir) / name).exists() else None

  for name, loader, n_train, full in (("fashion-mnist", load_fashion_mnist, fm_train, 60_000),
                                      ("cifar10", load_cifar10, cifar_train, 50_000)):
    d = loader(source(name))
    if len(d.y_train) != full:
      raise ValueError(f"pack: {name} was read from a packed subset ({len(d.y_train)} training examples); "
                       "pack from the canonical files.")
    tr, te = _balanced(d.y_train, n_train // 10), _balanced(d.y_test, test // 10)
    (out / name).mkdir(parents=True, exist_ok=True)
    path = out / name / PACKED
    np.savez_compressed(path, x_train=d.x_train[tr], y_train=d.y_train[tr], x_test=d.x_test[te],
                        y_test=d.y_test[te])
    written[name] = {"train": len(tr), "test": len(te), "bytes": path.stat().st_size}
  load_tiny_shakespeare(source("tiny_shakespeare"))  # checked
  (out / "tiny_shakespeare").mkdir(parents=True, exist_ok=True)
  path = out / "tiny_shakespeare" / "input.txt"
  path.write_bytes(_shakespeare_file(source("tiny_shakespeare")).read_bytes())
  written["tiny_shakespeare"] = {"bytes": path.stat().st_size}
  (out / "manifest.json").write_text(json.dumps(written, indent=1))
  return written


def _load_packed(dirs: list[Path], what: str, shape: tuple[int, ...], mean, std) -> ImageData | None:
  """A :func:`pack` subset from the first of ``dirs`` that has one, checked; None if none has."""
  found = next((d / PACKED for d in dirs if (d / PACKED).is_file()), None)
  if found is None:
    return None
  with np.load(found) as z:
    arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
  for split in ("train", "test"):
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    if x.dtype != np.uint8 or x.shape[1:] != shape or len(x) != len(y) or len(y) % 10:
      raise ValueError(f"{found}: {split} split has x {x.shape} {x.dtype}, y {y.shape}; expected uint8 "
                       f"(n, {', '.join(map(str, shape))}) with n a multiple of 10: rebuild it with pack().")
    _check_labels(y, 10, len(y) // 10, f"{what} ({found}) {split} labels")
  return ImageData(arrays["x_train"], arrays["y_train"].astype(np.int32), arrays["x_test"],
                   arrays["y_test"].astype(np.int32), mean, std)


# --------------------------------------------------------------------------------------- Fashion-MNIST

def _read_idx(path: Path, magic: int, shape: tuple[int, ...]) -> np.ndarray:
  with gzip.open(path, "rb") as f:
    raw = f.read()
  got_magic = int.from_bytes(raw[:4], "big")
  ndim = magic & 0xFF
  dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
  if got_magic != magic or dims != shape:
    raise ValueError(f"{path}: IDX header says magic {got_magic} shape {dims}, expected {magic} {shape}.")
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(shape)):
    raise ValueError(f"{path}: {data.size} values after the header, expected {int(np.prod(shape))}.")
  return data.reshape(shape)


def load_fashion_mnist(data_dir: str | os.PathLike | None = None, download: bool = False) -> ImageData:
  """Fashion-MNIST (Xiao et al. 2017): 60,000 train and 10,000 test 28x28 grey images, 10 classes.

  Reads the four IDX ``.gz`` files from the first folder that has them (see the module docstring;
  ``apt-get install dataset-fashion-mnist`` puts them in ``/usr/share/datasets/fashion-mnist``).

  Returns:
    ``ImageData`` with ``x_*`` uint8 of shape ``(n, 28, 28, 1)`` and ``y_*`` int32.
  """
  dirs = _candidates(data_dir, "OPTAX_NOWCAST_FASHION_MNIST", "fashion-mnist", [FASHION_MNIST_SYSTEM_DIR])
  found = next((d for d in dirs if all((d / f).is_file() for f in FASHION_MNIST_FILES)), None)
  if found is None and download:
    found = default_cache_dir() / "fashion-mnist"
    for name, md5 in FASHION_MNIST_FILES.items():
      if not (found / name).is_file():
        _download(FASHION_MNIST_URL + name, found / name, md5)
  if found is None and (packed := _load_packed(dirs, "Fashion-MNIST", (28, 28, 1), FASHION_MNIST_MEAN,
                                               FASHION_MNIST_STD)) is not None:
    return packed
  if found is None:
    raise FileNotFoundError(
        "Fashion-MNIST not found: looked for " + ", ".join(FASHION_MNIST_FILES) + " in "
        + ", ".join(map(str, dirs)) + ". Install the Debian package (apt-get install dataset-fashion-mnist), "
        "set OPTAX_NOWCAST_FASHION_MNIST to a folder with the files, or pass download=True.")
  x_tr = _read_idx(found / "train-images-idx3-ubyte.gz", 2051, (60000, 28, 28))
  y_tr = _read_idx(found / "train-labels-idx1-ubyte.gz", 2049, (60000,))
  x_te = _read_idx(found / "t10k-images-idx3-ubyte.gz", 2051, (10000, 28, 28))
  y_te = _read_idx(found / "t10k-labels-idx1-ubyte.gz", 2049, (10000,))
  _check_labels(y_tr, 10, 6000, "Fashion-MNIST train labels")
  _check_labels(y_te, 10, 1000, "Fashion-MNIST test labels")
  return ImageData(x_tr[..., None], y_tr.astype(np.int32), x_te[..., None], y_te.astype(np.int32),
                   FASHION_MNIST_MEAN, FASHION_MNIST_STD)


# --------------------------------------------------------------------------------------------- CIFAR-10

def _cifar_batches(source: Path):
  """Yields (name, dict) for the pickled batches in a tarball or an extracted folder."""
  names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
  if source.is_file():
    seen = set()
    with tarfile.open(source, "r|gz") as tar:  # one streaming pass: no seeking back in the gzip stream
      for m in tar:
        if m.isfile() and Path(m.name).name in names:
          seen.add(Path(m.name).name)
          yield Path(m.name).name, pickle.loads(tar.extractfile(m).read(), encoding="bytes")  # noqa: S301
    if missing := sorted(set(names) - seen):
      raise ValueError(f"{source} has no {missing}: it is not the CIFAR-10 python-version tarball.")
  else:
    folder = source / "cifar-10-batches-py" if (source / "cifar-10-batches-py").is_dir() else source
    for n in names:
      with open(folder / n, "rb") as f:
        yield n, pickle.load(f, encoding="bytes")  # noqa: S301 - the canonical format is a pickle


def _find_cifar(dirs: list[Path]) -> Path | None:
  for d in dirs:
    if d.is_file() and d.name.endswith((".tar.gz", ".tgz")):
      return d
    for cand in (d / CIFAR10_TARBALL, d / "cifar-10-batches-py", d):
      if cand.is_file() or (cand.is_dir() and (cand / "test_batch").is_file()):
        return cand
  return None


def load_cifar10(path: str | os.PathLike | None = None, download: bool = False) -> ImageData:
  """CIFAR-10 (Krizhevsky 2009): 50,000 train and 10,000 test 32x32 colour images, 10 classes.

  ``path`` is the canonical python-version tarball (``cifar-10-python.tar.gz``), the folder holding it, or the
  extracted ``cifar-10-batches-py`` folder.

  Returns:
    ``ImageData`` with ``x_*`` uint8 of shape ``(n, 32, 32, 3)`` (NHWC) and ``y_*`` int32.
  """
  dirs = _candidates(path, "OPTAX_NOWCAST_CIFAR10", "cifar10")
  found = _find_cifar(dirs)
  if found is None and download:
    found = default_cache_dir() / "cifar10" / CIFAR10_TARBALL
    _download(CIFAR10_URL, found, CIFAR10_MD5)
  if found is None and (packed := _load_packed(dirs, "CIFAR-10", (32, 32, 3),
                                               CIFAR10_MEAN, CIFAR10_STD)) is not None:
    return packed
  if found is None:
    raise FileNotFoundError(
        f"CIFAR-10 not found: looked for {CIFAR10_TARBALL} or cifar-10-batches-py/ in "
        + ", ".join(map(str, dirs)) + f". Get the python version from {CIFAR10_URL}, set "
        "OPTAX_NOWCAST_CIFAR10 to the tarball or folder, or pass download=True.")
  xs, ys = {}, {}
  for name, batch in _cifar_batches(found):
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if data.shape != (10000, 3072) or data.dtype != np.uint8 or labels.shape != (10000,):
      raise ValueError(f"{found}: {name} has data {data.shape} {data.dtype} and labels {labels.shape}, "
                       "expected (10000, 3072) uint8 and (10000,).")
    xs[name] = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # channel-major rows -> NHWC
    ys[name] = labels.astype(np.int32)
  x_tr = np.concatenate([xs[f"data_batch_{i}"] for i in range(1, 6)])
  y_tr = np.concatenate([ys[f"data_batch_{i}"] for i in range(1, 6)])
  _check_labels(y_tr, 10, 5000, "CIFAR-10 train labels")
  _check_labels(ys["test_batch"], 10, 1000, "CIFAR-10 test labels")
  return ImageData(np.ascontiguousarray(x_tr), y_tr, np.ascontiguousarray(xs["test_batch"]), ys["test_batch"],
                   CIFAR10_MEAN, CIFAR10_STD)


# ------------------------------------------------------------------------------------- Tiny Shakespeare

def _shakespeare_file(path: str | os.PathLike | None, download: bool = False) -> Path:
  cands = _candidates(path, "OPTAX_NOWCAST_SHAKESPEARE", "tiny_shakespeare")
  files = [c if c.is_file() else c / "input.txt" for c in cands]
  found = next((f for f in files if f.is_file()), None)
  if found is None and download:
    found = default_cache_dir() / "tiny_shakespeare" / "input.txt"
    _download(SHAKESPEARE_URL, found, None)
  if found is None:
    raise FileNotFoundError(
        "Tiny Shakespeare not found: looked for " + ", ".join(map(str, files)) + f". Get it from "
        f"{SHAKESPEARE_URL}, set OPTAX_NOWCAST_SHAKESPEARE to the file, or pass download=True.")
  return found


def load_tiny_shakespeare(path: str | os.PathLike | None = None, download: bool = False,
                          val_fraction: float = 0.1) -> TextData:
  """Tiny Shakespeare (Karpathy's char-rnn corpus): 1,115,394 characters, a 65-character vocabulary.

  The vocabulary is the sorted set of characters; the last ``val_fraction`` of the text is the validation
  split (as in nanoGPT's ``shakespeare_char``).
  """
  if not 0.0 < val_fraction < 1.0:
    raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
  found = _shakespeare_file(path, download)
  text = found.read_text(encoding="utf-8")
  vocab = "".join(sorted(set(text)))
  if len(text) != SHAKESPEARE_LENGTH or len(vocab) != SHAKESPEARE_VOCAB:
    raise ValueError(f"{found}: {len(text)} characters and a {len(vocab)}-character vocabulary, expected "
                     f"{SHAKESPEARE_LENGTH} and {SHAKESPEARE_VOCAB}: not the Tiny Shakespeare corpus.")
  lut = np.zeros(max(map(ord, vocab)) + 1, np.int32)
  lut[[ord(c) for c in vocab]] = np.arange(len(vocab), dtype=np.int32)
  ids = lut[np.frombuffer(text.encode("utf-32-le"), np.uint32)]
  n_val = int(round(val_fraction * len(ids)))
  return TextData(ids[:-n_val], ids[-n_val:], vocab)


__all__ = [
    "ImageData",
    "pack",
    "TextData",
    "default_cache_dir",
    "load_cifar10",
    "load_fashion_mnist",
    "load_tiny_shakespeare",
]
