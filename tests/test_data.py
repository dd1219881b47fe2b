"""Data sets: CIFAR reader (layout, normalization, safe unpickling), augmentation, mnist1d, synthetic."""

from __future__ import annotations

import importlib
import io
import pickle
import struct

import numpy as np
import pytest
import torch

from landscape.data import data_dir, dataset_names, get_dataset
from landscape.data.augment import RandomCropFlip, random_crop_flip
from landscape.data.cifar import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    cifar10,
    cifar100,
)


class Py2Pickler(pickle._Pickler):
    """Writes pickles like the official CIFAR files (Python 2 cPickle, protocol 2): bytes as
    BINSTRING and numpy's reconstruct function under its old ``numpy.core`` path."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_bytes(self, obj):
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_bytes

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core.", "numpy.core.")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def dump(obj, path, style):
    if style == "py2":
        buf = io.BytesIO()
        Py2Pickler(buf, protocol=2).dump(obj)
        path.write_bytes(buf.getvalue())
    else:
        path.write_bytes(pickle.dumps(obj, protocol=style))


def write_cifar10(folder, n=3, style="py2", seed=0):
    """A tiny CIFAR-10 folder: five train batches of n images, a test batch of n + 1."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for fname, m in [(f"data_batch_{i}", n) for i in range(1, 6)] + [("test_batch", n + 1)]:
        data = rng.integers(0, 256, (m, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, m)]
        dump({b"batch_label": b"tiny", b"labels": labels, b"data": data, b"filenames": [b"x.png"] * m}, folder / fname, style)
        out[fname] = (data, labels)
    return out


def write_cifar100(folder, n=4, style="py2", seed=1):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for fname in ("train", "test"):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine, coarse = [int(v) for v in rng.integers(0, 100, n)], [int(v) for v in rng.integers(0, 20, n)]
        dump({b"fine_labels": fine, b"coarse_labels": coarse, b"data": data}, folder / fname, style)
        out[fname] = (data, fine)
    return out


def expected_images(data, mean, std):
    """Reference in float64 by explicit indexing: pixel (c, r, k) is data[c * 1024 + r * 32 + k]."""
    n = data.shape[0]
    img = np.empty((n, 3, 32, 32))
    for c in range(3):
        for r in range(32):
            img[:, c, r, :] = data[:, c * 1024 + r * 32 : c * 1024 + r * 32 + 32] / 255.0
    return (img - np.array(mean)[None, :, None, None]) / np.array(std)[None, :, None, None]


# ---- CIFAR reader ----------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["py2", 2, 5])
def test_cifar10_reader_shapes_labels_normalization(tmp_path, style):
    files = write_cifar10(tmp_path / "cifar-10-batches-py", style=style)
    train = cifar10("train", root=tmp_path)  # the parent folder
    test = cifar10("test", root=tmp_path / "cifar-10-batches-py")  # the folder itself
    assert train.x.shape == (15, 3, 32, 32) and train.x.dtype == torch.float32
    assert test.x.shape == (4, 3, 32, 32) and (train.num_classes, train.name, test.split) == (10, "cifar10", "test")
    data = np.concatenate([files[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = sum((files[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert train.y.tolist() == labels and test.y.tolist() == files["test_batch"][1]
    np.testing.assert_allclose(train.x.numpy(), expected_images(data, CIFAR10_MEAN, CIFAR10_STD), rtol=0, atol=2e-6)
    raw = cifar10("test", root=tmp_path, normalize=False)
    np.testing.assert_allclose(raw.x.numpy(), expected_images(files["test_batch"][0], (0, 0, 0), (1, 1, 1)), atol=1e-7)
    assert raw.x.min() >= 0 and raw.x.max() <= 1 and train.info["mean"] == list(CIFAR10_MEAN)


def test_cifar100_reader_uses_fine_labels(tmp_path):
    files = write_cifar100(tmp_path / "cifar-100-python")
    for split in ("train", "test"):
        ds = get_dataset("cifar100", split, root=tmp_path)
        assert ds.num_classes == 100 and ds.y.tolist() == files[split][1]
        np.testing.assert_allclose(ds.x.numpy(), expected_images(files[split][0], CIFAR100_MEAN, CIFAR100_STD), atol=2e-6)


def test_cifar_root_defaults_to_data_dir(tmp_path, monkeypatch):
    write_cifar100(tmp_path / "cifar-100-python")
    monkeypatch.setenv("LANDSCAPE_DATA", str(tmp_path))
    assert len(cifar100("test")) == 4


def test_missing_cifar_folder_explains_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        cifar10("train", root=tmp_path / "nowhere")
    msg = str(e.value)
    for part in ("cifar-10-batches-py", "data_batch_1", "data_batch_5", "test_batch", 'b"data" uint8 (N, 3072)', 'b"labels"', "nothing is downloaded"):
        assert part in msg, part
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python(.|\n)*b\"fine_labels\""):
        get_dataset("cifar100", "test", root=tmp_path)
    # a folder with only the test batch: the train split names what is missing
    write_cifar10(tmp_path / "c")
    (tmp_path / "c" / "data_batch_3").unlink()
    assert len(cifar10("test", root=tmp_path / "c")) == 4
    with pytest.raises(FileNotFoundError, match="data_batch_1, data_batch_2, data_batch_3"):
        cifar10("train", root=tmp_path / "c")


class Payload:
    """A pickle that runs code when loaded: ``__reduce__`` calls exec."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def test_malicious_pickle_is_refused_and_not_executed(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    # the payload is live: the plain unpickler would create the marker
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Payload(probe)))
    assert probe.exists()
    marker = tmp_path / "pwned"
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": Payload(marker), b"labels": [0]}))
    with pytest.raises(pickle.UnpicklingError, match="data_batch_2.*refusing to load global builtins.exec"):
        cifar10("train", root=tmp_path)
    assert not marker.exists()
    # any other global is refused too (here a numpy function that is not array reconstruction)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": np.load}))
    with pytest.raises(pickle.UnpicklingError, match="numpy.*load"):
        cifar10("test", root=tmp_path)


def test_malformed_cifar_content_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    dump({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, folder / "test_batch", "py2")
    with pytest.raises(ValueError, match="uint8 array"):
        cifar10("test", root=tmp_path)
    dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, folder / "test_batch", "py2")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        cifar10("test", root=tmp_path)
    dump({b"data": np.zeros((2, 3072), np.uint8)}, folder / "test_batch", "py2")
    with pytest.raises(ValueError, match="missing key"):
        cifar10("test", root=tmp_path)


# ---- augmentation ------------------------------------------------------------------------------------


def candidates(img, padding, fill):
    """Brute force: every crop of the padded image, and every mirrored crop."""
    c, h, w = img.shape
    padded = torch.as_tensor(fill, dtype=img.dtype).reshape(-1, 1, 1).expand(c, h + 2 * padding, w + 2 * padding).clone()
    padded[:, padding : padding + h, padding : padding + w] = img
    out = {}
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            out[(dy, dx, False)], out[(dy, dx, True)] = crop, crop.flip(-1)
    return out


def matches(out, img, padding, fill):
    return [k for k, v in candidates(img, padding, fill).items() if torch.equal(v, out)]


def test_crop_flip_outputs_are_crops_of_the_padded_image():
    x = torch.rand(40, 2, 5, 6, generator=torch.Generator().manual_seed(0)) + 1.0
    fill = (-1.5, 0.25)
    out = random_crop_flip(x, torch.Generator().manual_seed(1), padding=2, fill=fill)
    assert out.shape == x.shape and out.dtype == x.dtype
    seen = set()
    for i in range(len(x)):
        keys = matches(out[i], x[i], 2, fill)
        assert len(keys) == 1, i  # exactly one crop offset and flip reproduces the output
        seen.add(keys[0])
    assert len({k[2] for k in seen}) == 2 and len({k[:2] for k in seen}) > 10  # both flips, many offsets


def test_crop_flip_is_seeded_by_the_generator_only():
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    aug = RandomCropFlip(padding=4)
    torch.manual_seed(123)  # the global RNG must play no role
    a = aug(x, torch.Generator().manual_seed(7))
    torch.manual_seed(456)
    b = aug(x, torch.Generator().manual_seed(7))
    c = aug(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_flip_without_padding_flips_half():
    x = torch.rand(64, 1, 3, 4, generator=torch.Generator().manual_seed(0))
    out = random_crop_flip(x, torch.Generator().manual_seed(0), padding=0)
    flipped = [torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)]
    assert all(f or torch.equal(o, xi) for f, o, xi in zip(flipped, out, x))
    assert 20 < sum(flipped) < 44
    assert torch.equal(random_crop_flip(x, torch.Generator(), padding=0, flip=False), x)


def test_augment_errors():
    g = torch.Generator()
    with pytest.raises(ValueError, match="N, C, H, W"):
        random_crop_flip(torch.zeros(3, 4, 4), g)
    with pytest.raises(ValueError, match="one per channel"):
        random_crop_flip(torch.zeros(1, 3, 4, 4), g, fill=(0.0, 1.0))


def test_cifar_augmentation_pads_with_black_pixels(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py")
    ds = get_dataset("cifar10", "test", root=tmp_path, augment=True)
    assert get_dataset("cifar10", "test", root=tmp_path).transform is None
    raw = cifar10("test", root=tmp_path, normalize=False).x
    mean, std = torch.tensor(CIFAR10_MEAN).reshape(3, 1, 1), torch.tensor(CIFAR10_STD).reshape(3, 1, 1)
    (xb, yb), = ds.batches(4, augment=True, generator=torch.Generator().manual_seed(3))
    assert xb.shape == (4, 3, 32, 32) and torch.equal(yb, ds.y)
    pixels = xb * std + mean  # back to pixel space: the padding must be 0 (black), as in torchvision
    for i in range(4):
        cands = candidates(raw[i], 4, 0.0)
        assert any(torch.allclose(v, pixels[i], atol=1e-6) for v in cands.values())
    assert not torch.equal(xb, ds.x)  # some crop or flip happened


# ---- mnist1d, synthetic, get_dataset ------------------------------------------------------------------


def test_mnist1d_split_sizes_and_npz_cache(monkeypatch):
    # the default root is the per-run data folder of conftest, so other tests share the cache
    train = get_dataset("mnist1d", "train")
    test = get_dataset("mnist1d", "test")
    assert train.x.shape == (4000, 40) and test.x.shape == (1000, 40) and train.num_classes == 10
    assert (data_dir() / "mnist1d_n5000_s42.npz").is_file()

    def fail(*a, **k):
        raise AssertionError("regenerated instead of reading the cache")

    monkeypatch.setattr(importlib.import_module("landscape.data.mnist1d"), "_generate", fail)
    again = get_dataset("mnist1d", "train")
    assert torch.equal(again.x, train.x) and torch.equal(again.y, train.y)


@pytest.mark.parametrize("shape", [(7,), (3, 4, 4), (2, 1, 3, 5)])
def test_synthetic_is_seeded_for_any_shape(shape):
    a = get_dataset("synthetic", "train", num_samples=20, input_shape=shape, num_classes=3, seed=5)
    b = get_dataset("synthetic", "train", num_samples=20, input_shape=shape, num_classes=3, seed=5)
    c = get_dataset("synthetic", "train", num_samples=20, input_shape=shape, num_classes=3, seed=6)
    t = get_dataset("synthetic", "test", num_samples=20, input_shape=shape, num_classes=3, seed=5)
    assert a.x.shape == (20, *shape) and a.input_shape == shape and set(a.y.tolist()) <= {0, 1, 2}
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x) and not torch.equal(a.x, t.x)


def test_get_dataset_errors():
    assert {"cifar10", "cifar100", "mnist1d", "synthetic"} <= set(dataset_names())
    with pytest.raises(ValueError, match="did you mean 'cifar10'"):
        get_dataset("cifar-10")
    with pytest.raises(ValueError, match="unknown split 'val'; accepted: train, test"):
        get_dataset("synthetic", "val")
    with pytest.raises(ValueError, match="no option 'normalise' \\(did you mean 'normalize'\\?\\)"):
        get_dataset("cifar10", "test", normalise=False)
    with pytest.raises(ValueError, match="did you mean 'num_samples'"):
        get_dataset("synthetic", num_sample=3)
