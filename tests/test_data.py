"""The data layer: real files from ../shared (MNIST test set, one N-MNIST
recording), corrupt and missing files, the ndigits event simulator, npz and
CIFAR readers on small files written here, and the spike encoders."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from chsnn.data import (
    DATASET_SHAPES,
    DATASETS,
    EVENT_DTYPE,
    ArrayDataset,
    DataBundle,
    DataError,
    MissingDataError,
    dataset_info,
    encode,
    events_to_frames,
    load_dataset,
    ndigits_cache_path,
    ndigits_events,
    read_nmnist_file,
    register_dataset,
    smoke_data,
    stratified_folds,
    stratified_split,
    unregister_dataset,
)
from chsnn.data.idx import read_idx

MNIST_MD5 = {
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
EXTENDING_DOC = Path(__file__).resolve().parents[1] / "docs" / "extending_dataset.md"
MNIST_TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
DURATION_US = 300_000


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_idx(path, arr: np.ndarray, code: int = 0x08) -> None:
    arr = np.asarray(arr)
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(">u1" if code == 0x08 else arr.dtype).tobytes()
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.fixture
def mnist_dir(shared_dir):
    d = shared_dir / "data" / "mnist"
    if not d.is_dir():
        pytest.skip("../shared/data/mnist is absent")
    return d


@pytest.fixture
def nmnist_sample(shared_dir):
    p = shared_dir / "data" / "events" / "sample_nmnist.bin"
    if not p.is_file():
        pytest.skip("../shared/data/events/sample_nmnist.bin is absent")
    return p


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("chsnn-cache")


@pytest.fixture(scope="module")
def ndigits(cache_root):
    return load_dataset("ndigits", root=cache_root, seed=0)


# --------------------------------------------------------------------------- MNIST (real files)


def test_mnist_t10k_checksums_split_and_labels(mnist_dir):
    for name, digest in MNIST_MD5.items():
        assert md5(mnist_dir / name) == digest, name
    labels = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz", ndim=1)
    assert labels.shape == (10000,) and labels[0] == 7  # the official test set starts with a 7
    assert np.bincount(labels).tolist() == MNIST_TEST_CLASS_COUNTS

    b = load_dataset(f"mnist:{mnist_dir}", seed=0)
    assert b.name == "mnist" and b.classes == [str(d) for d in range(10)] and b.sample_shape == (1, 28, 28)
    assert (len(b.train), len(b.test)) == (8000, 2000)
    assert b.kind == "static" and b.time_steps is None and b.input_shape == (1, 28, 28) and b.n_classes == 10
    assert "t10k only" in b.note and "8000/2000" in b.note and "seed 0" in b.note
    x_tr, y_tr = b.train.tensors()
    x_te, y_te = b.test.tensors()
    assert x_tr.dtype == torch.float32 and x_tr.shape == (8000, 1, 28, 28)
    assert float(x_tr.min()) == 0.0 and float(x_tr.max()) == 1.0
    # stratified: every class in both parts, the test part 20% of each class (to one sample)
    test_counts = np.bincount(y_te.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * np.array(MNIST_TEST_CLASS_COUNTS)) <= 1)
    assert (np.bincount(y_tr.numpy(), minlength=10) + test_counts).tolist() == MNIST_TEST_CLASS_COUNTS
    x0, y0 = b.test[0]
    assert isinstance(y0, int) and x0.shape == (1, 28, 28) and x0.dtype == torch.float32
    # seeded: the same seed gives the same split, another seed another one
    b_again = load_dataset(f"mnist:{mnist_dir}", seed=0)
    assert torch.equal(b_again.test.tensors()[1], y_te)
    b1 = load_dataset(f"mnist:{mnist_dir}", seed=1)
    assert not torch.equal(b1.test.tensors()[0], x_te)


def test_mnist_gz_and_plain_read_the_same(mnist_dir, tmp_path):
    for name in MNIST_MD5:
        with gzip.open(mnist_dir / name, "rb") as f:
            (tmp_path / name[:-3]).write_bytes(f.read())
    plain = load_dataset(f"mnist:{tmp_path}")
    packed = load_dataset(f"mnist:{mnist_dir}")
    for a, b in ((plain.train, packed.train), (plain.test, packed.test)):
        xa, ya = a.tensors()
        xb, yb = b.tensors()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_mnist_corrupt_files_raise_clear_errors(mnist_dir, tmp_path):
    images = mnist_dir / "t10k-images-idx3-ubyte.gz"
    labels = mnist_dir / "t10k-labels-idx1-ubyte.gz"
    shutil.copy(labels, tmp_path / labels.name)

    # a truncated download (half the gzip stream)
    raw = images.read_bytes()
    (tmp_path / images.name).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz.*gzip"):
        load_dataset(f"mnist:{tmp_path}")

    # an uncompressed file cut short: the header promises more pixels than there are
    (tmp_path / images.name).unlink()
    with gzip.open(images, "rb") as f:
        data = f.read()
    plain = tmp_path / "t10k-images-idx3-ubyte"
    plain.write_bytes(data[:-1000])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: truncated"):
        load_dataset(f"mnist:{tmp_path}")

    # a wrong magic number (labels' 0x00000801 in an images file)
    plain.write_bytes(b"\x00\x00\x08\x01" + data[4:])
    with pytest.raises(DataError, match="magic number 0x00000801"):
        load_dataset(f"mnist:{tmp_path}")

    # garbage
    plain.write_bytes(b"not an idx file at all")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_dataset(f"mnist:{tmp_path}")

    # images and labels that disagree in number
    plain.write_bytes(data)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(9999, np.uint8))
    (tmp_path / labels.name).unlink()
    with pytest.raises(DataError, match="10000 images but .*9999 labels"):
        load_dataset(f"mnist:{tmp_path}")


@pytest.mark.parametrize(
    "spec, files",
    [
        ("mnist", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
        ("fashion-mnist", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
        ("emnist", ["emnist-balanced-train-images-idx3-ubyte", "emnist-balanced-test-labels-idx1-ubyte"]),
        ("cifar10", ["data_batch_1", "data_batch_5", "test_batch"]),
        ("cifar100", ["train", "test"]),
        ("nmnist", ["Train/0/*.bin", "Test/0/*.bin"]),
        ("dvsgesture", ["ibmGestureTrain", "ibmGestureTest"]),
        ("cifar10dvs", ["airplane/*.aedat4", "truck/*.aedat4"]),
        ("shd", ["shd_train.h5", "shd_test.h5"]),
    ],
)
def test_missing_files_name_files_and_directory(spec, files, tmp_path):
    with pytest.raises(MissingDataError) as info:
        load_dataset(f"{spec}:{tmp_path}")
    msg = str(info.value)
    assert str(tmp_path) in msg
    for f in files:
        assert f in msg, (f, msg)
    assert "never downloads" in msg and "Get them from" in msg


def test_missing_files_default_directory_under_root(tmp_path):
    with pytest.raises(MissingDataError, match=str(tmp_path / "mnist")):
        load_dataset("mnist", root=tmp_path)


def test_mnist_test_files_missing_is_an_error(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(4, dtype=np.uint8))
    with pytest.raises(MissingDataError, match="t10k-images-idx3-ubyte") as info:
        load_dataset(f"mnist:{tmp_path}")
    assert "train-images" not in str(info.value)


def test_fashion_mnist_official_split_from_synthetic_files(tmp_path):
    rng = np.random.default_rng(0)
    for part, n in (("train", 30), ("t10k", 12)):
        write_idx(tmp_path / f"{part}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)).astype(np.uint8))
        write_idx(tmp_path / f"{part}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    b = load_dataset(f"fashion-mnist:{tmp_path}")
    assert (len(b.train), len(b.test)) == (30, 12) and "official split 30/12" in b.note
    assert b.classes[9] == "Ankle boot"
    x, y = b.test[3]
    assert y == 3 and x.shape == (1, 28, 28) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0


@pytest.mark.parametrize("parts", [("train", "t10k"), ("t10k",)])
def test_mnist_kfold_tests_every_image_once_over_k_seeds(tmp_path, parts):
    # Each image carries its own number in its first two pixels.
    sizes = {"train": 100, "t10k": 50}
    start = 0
    for part in parts:
        n = sizes[part]
        img = np.zeros((n, 28, 28), np.uint8)
        img[:, 0, 0], img[:, 0, 1] = (np.arange(start, start + n) % 256), (np.arange(start, start + n) // 256)
        write_idx(tmp_path / f"{part}-images-idx3-ubyte", img)
        write_idx(tmp_path / f"{part}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
        start += n

    def numbers(ds):
        pixels = (ds.data[:, 0, 0, :2]).long()
        return (pixels[:, 0] + 256 * pixels[:, 1]).tolist()

    folds = [load_dataset(f"mnist:{tmp_path}", kfold="5", seed=s) for s in range(5)]
    tested = sorted(i for b in folds for i in numbers(b.test))
    assert tested == list(range(start))  # every image tested exactly once
    for b in folds:
        assert len(b.test) == start // 5 and set(numbers(b.train)).isdisjoint(numbers(b.test)) and "5-fold" in b.note
        assert np.bincount(b.test.targets.numpy(), minlength=10).min() > 0  # stratified
    assert numbers(load_dataset(f"mnist:{tmp_path}", kfold=5, seed=5).test) != numbers(folds[0].test)  # a new partition
    for bad in ("1", "five", 2.5, True):
        with pytest.raises(ValueError, match="kfold="):
            load_dataset(f"mnist:{tmp_path}", kfold=bad)
    with pytest.raises(ValueError, match="more folds than the"):
        load_dataset(f"mnist:{tmp_path}", kfold="1000")


def test_emnist_split_option_and_orientation(tmp_path):
    img = np.zeros((2, 28, 28), np.uint8)
    img[:, 0, :] = 255  # stored transposed: the first stored row is the first column
    for part in ("train", "test"):
        write_idx(tmp_path / f"emnist-letters-{part}-images-idx3-ubyte", img)
        write_idx(tmp_path / f"emnist-letters-{part}-labels-idx1-ubyte", np.array([1, 26], np.uint8))
    b = load_dataset(f"emnist:{tmp_path}", split="letters")
    x, y = b.train[1]
    assert y == 25 and b.n_classes == 26 and b.classes[y] == "Z"  # letters are stored 1..26
    assert float(x[0, :, 0].min()) == 1.0 and float(x[0, 0, 1:].max()) == 0.0  # first column lit
    with pytest.raises(MissingDataError, match="emnist-balanced-train-images-idx3-ubyte"):
        load_dataset(f"emnist:{tmp_path}")
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset(f"emnist:{tmp_path}", split="nope")


# --------------------------------------------------------------------------- N-MNIST (real recording)


def test_nmnist_sample_recording(nmnist_sample):
    ev = read_nmnist_file(nmnist_sample)
    assert ev.dtype == EVENT_DTYPE and ev.dtype.names == ("x", "y", "t", "p")
    assert len(ev) == 4325
    assert ev["x"].min() >= 0 and ev["x"].max() < 34 and ev["y"].min() >= 0 and ev["y"].max() < 34
    assert set(np.unique(ev["p"]).tolist()) == {0, 1}
    assert np.all(np.diff(ev["t"]) >= 0)
    assert 250_000 < ev["t"][-1] < 350_000  # three saccades of about 100 ms


def test_nmnist_directory_layout_and_frames(nmnist_sample, tmp_path):
    for part, digit in (("Train", 3), ("Train", 5), ("Test", 7)):
        (tmp_path / part / str(digit)).mkdir(parents=True)
        shutil.copy(nmnist_sample, tmp_path / part / str(digit) / "00001.bin")
    b = load_dataset(f"nmnist:{tmp_path}", time_steps=6)
    assert (len(b.train), len(b.test)) == (2, 1) and b.kind == "events" and b.input_shape == (2, 34, 34)
    x, y = b.train[1]
    assert y == 5 and x.shape == (6, 2, 34, 34) and x.dtype == torch.float32
    # every event lands in a frame (tonic's time binning may leave out the very last ones)
    assert 4320 <= float(x.sum()) <= 4325
    assert len(b.test.events(0)) == 4325


def test_nmnist_corrupt_recordings(nmnist_sample, tmp_path):
    raw = nmnist_sample.read_bytes()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(raw[:-3])
    with pytest.raises(DataError, match="cut.bin.*5-byte events"):
        read_nmnist_file(cut)
    bad = bytearray(raw)
    bad[5 * 100] = 200  # x = 200 on a 34x34 sensor
    (tmp_path / "bad.bin").write_bytes(bytes(bad))
    with pytest.raises(DataError, match="bad.bin.*outside the 34x34 sensor"):
        read_nmnist_file(tmp_path / "bad.bin")
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        read_nmnist_file(tmp_path / "empty.bin")


def test_tonic_wrappers_read_local_files_without_download(tmp_path):
    """SHD and DVS128 Gesture through tonic's classes, on tiny files in their layouts."""
    h5py = pytest.importorskip("h5py")
    already = {m for m in ("torchvision", "torchaudio") if m in sys.modules}
    rng = np.random.default_rng(0)
    (tmp_path / "SHD").mkdir()
    for part, n in (("train", 5), ("test", 3)):
        with h5py.File(tmp_path / "SHD" / f"shd_{part}.h5", "w") as f:
            times = f.create_dataset("spikes/times", (n,), dtype=h5py.vlen_dtype(np.float32))
            units = f.create_dataset("spikes/units", (n,), dtype=h5py.vlen_dtype(np.uint16))
            for i in range(n):
                times[i] = np.sort(rng.uniform(0, 1, 40)).astype(np.float32)
                units[i] = rng.integers(0, 700, 40).astype(np.uint16)
            f.create_dataset("labels", data=np.arange(n) + 10)
            f.create_dataset("extra/keys", data=np.array([b"k"] * 20))
            f.create_dataset("extra/speaker", data=np.zeros(n, np.int64))
    shd = load_dataset(f"shd:{tmp_path}", time_steps=5)
    assert (len(shd.train), len(shd.test)) == (5, 3) and shd.input_shape == (700,) and shd.n_classes == 20
    x, y = shd.train[2]
    assert x.shape == (5, 700) and y == 12 and 39 <= float(x.sum()) <= 40

    for folder, n in (("ibmGestureTrain", 3), ("ibmGestureTest", 2)):
        user = tmp_path / "DVSGesture" / folder / "user01_fluorescent"
        user.mkdir(parents=True)
        for c in range(n):  # tonic's release: (n, 4) rows x, y, p, t in ms
            ev = np.stack(
                [rng.integers(0, 128, 100), rng.integers(0, 128, 100), rng.integers(0, 2, 100), np.sort(rng.integers(0, 500, 100))], 1
            )
            np.save(user / f"{c}.npy", ev.astype(np.float64))
    gest = load_dataset(f"dvsgesture:{tmp_path}", time_steps=4)
    assert (len(gest.train), len(gest.test)) == (3, 2) and gest.n_classes == 11
    x, y = gest.train[1]
    assert x.shape == (4, 2, 128, 128) and y == 1 and 99 <= float(x.sum()) <= 100
    # picklable, for DataLoader worker processes
    again = pickle.loads(pickle.dumps(gest.train))
    assert torch.equal(again[1][0], x)
    # tonic's datasets and transforms came in without torchvision / torchaudio
    assert {m for m in ("torchvision", "torchaudio") if m in sys.modules} <= already


# --------------------------------------------------------------------------- ndigits (simulator)


def test_simulator_deterministic_per_seed():
    a = ndigits_events(seed=0, indices=range(24))
    b = ndigits_events(seed=0, indices=range(24))
    c = ndigits_events(seed=1, indices=range(24))
    assert len(a) == 24
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not all(len(u) == len(w) and np.array_equal(u, w) for u, w in zip(a, c))
    # a sample's events do not depend on which others are simulated with it
    assert np.array_equal(ndigits_events(seed=0, indices=[5])[0], a[5])


def test_simulator_event_statistics():
    streams = ndigits_events(seed=0, indices=range(0, 1797, 45))
    for ev in streams:
        assert ev.dtype == EVENT_DTYPE
        assert 500 <= len(ev) <= 6000
        on, off = int((ev["p"] == 1).sum()), int((ev["p"] == 0).sum())
        assert 0.6 < on / off < 1.6  # a moving bright digit makes both ON and OFF edges
        assert set(np.unique(ev["p"]).tolist()) == {0, 1}
        t = ev["t"]
        assert np.all(np.diff(t) >= 0) and t[0] >= 0 and t[-1] <= DURATION_US
        # events during all three saccades
        assert all(((t >= k * DURATION_US // 3) & (t < (k + 1) * DURATION_US // 3)).sum() > 50 for k in range(3))
        for f in ("x", "y"):
            assert ev[f].min() >= 0 and ev[f].max() < 30


def test_ndigits_bundle(ndigits, cache_root):
    b = ndigits
    assert b.name == "ndigits" and b.kind == "events" and b.time_steps == 8
    assert b.input_shape == (2, 30, 30) and b.n_classes == 10
    assert (len(b.train), len(b.test)) == (1438, 359)
    x, y = b.train[0]
    assert x.shape == (8, 2, 30, 30) and x.dtype == torch.float32 and isinstance(y, int)
    assert set(b.train.indices.tolist()).isdisjoint(b.test.indices.tolist())
    assert len(set(b.train.indices.tolist()) | set(b.test.indices.tolist())) == 1797
    # cached events are the simulator's events, and the frames bin them
    i = 7
    ev = b.train.events(i)
    assert np.array_equal(ev, ndigits_events(seed=0, indices=[b.train.indices[i]])[0])
    assert len(ev) - 3 <= float(b.train[i][0].sum()) <= len(ev)
    assert ndigits_cache_path(0, cache_root).is_file()
    # the same split as digits
    d = load_dataset("digits", seed=0)
    assert torch.equal(d.test.tensors()[1], b.test.tensors()[1])


def test_ndigits_other_time_steps_from_cache(ndigits, cache_root):
    b4 = load_dataset("ndigits", root=cache_root, time_steps=4)
    x4, _ = b4.train.tensors()
    x8, _ = ndigits.train.tensors()
    assert x4.shape[1:] == (4, 2, 30, 30)
    assert torch.allclose(x4.sum(1), x8.sum(1), atol=3)  # the same events, binned coarser


def test_ndigits_is_learnable(ndigits):
    """A linear softmax on the summed frames already beats 90%."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is fastest, and robust on a busy machine
    try:
        torch.manual_seed(0)
        xa, ya = ndigits.train.tensors()
        xb, yb = ndigits.test.tensors()
        xa, xb = xa.sum(1).flatten(1), xb.sum(1).flatten(1)
        scale = xa.max()
        xa, xb = xa / scale, xb / scale
        lin = torch.nn.Linear(xa.shape[1], 10)
        opt = torch.optim.Adam(lin.parameters(), lr=0.01)
        for _ in range(150):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(lin(xa), ya).backward()
            opt.step()
        acc = (lin(xb).argmax(1) == yb).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    assert acc > 0.9, acc


def test_ndigits_corrupt_cache_is_regenerated(monkeypatch, tmp_path):
    import chsnn.data.digits as dg

    images, labels = dg.digit_images()
    monkeypatch.setattr(dg, "digit_images", lambda: (images[:150].copy(), labels[:150].copy()))  # a quick subset
    first = load_dataset("ndigits", root=tmp_path)
    path = ndigits_cache_path(0, tmp_path)
    good = path.read_bytes()
    for broken in (good[:5000], b"garbage", good[:-1]):  # truncated, not a zip, one byte short
        path.write_bytes(broken)
        with pytest.warns(RuntimeWarning, match="regenerating"):
            again = load_dataset("ndigits", root=tmp_path)
        assert torch.equal(again.train.tensors()[0], first.train.tensors()[0])
        assert path.read_bytes() == good  # rewritten in full
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp files left behind


def test_digits_bundle():
    b = load_dataset("digits", seed=3)
    assert b.kind == "static" and b.time_steps is None and b.input_shape == (1, 8, 8)
    assert (len(b.train), len(b.test)) == (1438, 359)
    x, y = b.train.tensors()
    assert x.shape == (1438, 1, 8, 8) and float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert np.bincount(y.numpy(), minlength=10).min() > 100
    assert "seed 3" in b.note


def test_stratified_split_exact_sizes():
    labels = np.repeat(np.arange(3), [5, 7, 11])
    tr, te = stratified_split(labels, 0.25, seed=0)
    assert len(te) == round(0.25 * 23) and len(tr) + len(te) == 23
    assert np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(23))
    assert set(labels[te].tolist()) == {0, 1, 2}


def test_stratified_folds_partition_every_sample_once_and_balance_classes():
    labels = np.repeat(np.arange(3), [5, 7, 11])
    fold = stratified_folds(labels, 4, seed=0)
    assert fold.shape == labels.shape and set(fold.tolist()) == {0, 1, 2, 3}
    sizes = np.bincount(fold, minlength=4)
    assert sizes.sum() == 23 and sizes.max() - sizes.min() <= 1
    per_class = np.stack([np.bincount(fold[labels == c], minlength=4) for c in range(3)])
    assert (per_class.max(1) - per_class.min(1) <= 1).all()  # every class spread over the folds
    assert np.array_equal(fold, stratified_folds(labels, 4, seed=0))
    assert not np.array_equal(fold, stratified_folds(labels, 4, seed=1))
    with pytest.raises(ValueError, match="folds"):
        stratified_folds(labels, 24, seed=0)
    with pytest.raises(ValueError, match="k must"):
        stratified_folds(labels, 1, seed=0)


def test_events_to_frames_edge_cases():
    empty = np.zeros(0, EVENT_DTYPE)
    assert events_to_frames(empty, (4, 3, 2), 5).shape == (5, 2, 3, 4)
    short = np.array([(1, 2, 10, 1), (3, 0, 11, 0)], EVENT_DTYPE)  # 1 µs long: tonic alone would bin nothing
    f = events_to_frames(short, (4, 3, 2), 5)
    assert f.sum() == 2 and f[0, 1, 2, 1] == 1 and f[2, 0, 0, 3] == 1  # 2 µs spread over 5 bins


# --------------------------------------------------------------------------- load_dataset options


def test_load_dataset_rejects_bad_names_and_options(tmp_path):
    assert "ndigits" in DATASETS and "npz" in DATASETS
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*ndigits"):
        load_dataset("nope")
    with pytest.raises(ValueError, match="unknown option 'colour'"):
        load_dataset("digits", colour=True)
    with pytest.raises(ValueError, match="time_steps"):
        load_dataset("digits", time_steps=0)
    with pytest.raises(ValueError, match="seed"):
        load_dataset("digits", seed=-1)
    with pytest.raises(ValueError, match="takes no path"):
        load_dataset(f"digits:{tmp_path}")
    with pytest.raises(ValueError, match="labels must be"):
        load_dataset(f"cifar100:{tmp_path}", labels="medium")
    assert load_dataset("Digits").name == "digits"  # names are case-insensitive


# --------------------------------------------------------------------------- npz


def test_npz_round_trip_static_and_events(tmp_path):
    rng = np.random.default_rng(0)
    f = tmp_path / "grey.npz"
    x_tr = rng.integers(0, 256, (10, 5, 6)).astype(np.uint8)
    np.savez(f, x_train=x_tr, y_train=np.arange(10) % 3, x_test=x_tr[:4], y_test=np.array([0, 1, 2, 4]))
    b = load_dataset(f"npz:{f}")
    assert b.kind == "static" and b.input_shape == (1, 5, 6) and b.n_classes == 5 and b.time_steps is None
    x, y = b.train[2]
    assert y == 2 and torch.allclose(x[0], torch.from_numpy(x_tr[2] / 255.0).float())

    f = tmp_path / "frames.npz"
    frames = rng.integers(0, 3, (6, 4, 2, 5, 5)).astype(np.int16)
    np.savez(f, x_train=frames, y_train=np.arange(6) % 2, x_test=frames[:2].astype(np.float32), y_test=np.array([1, 0]))
    b = load_dataset(f"npz:{f}")
    assert b.kind == "events" and b.time_steps == 4 and b.input_shape == (2, 5, 5)
    x, y = b.test[0]
    assert x.shape == (4, 2, 5, 5) and torch.equal(x, torch.from_numpy(frames[0]).float())
    with pytest.raises(ValueError, match="time_steps=8"):
        load_dataset(f"npz:{f}", time_steps=8)


def test_npz_errors(tmp_path):
    x = np.zeros((4, 3, 3), np.float32)
    y = np.arange(4)

    def write(name, **arrays):
        p = tmp_path / name
        np.savez(p, **arrays)
        return p

    with pytest.raises(DataError, match="'y_test'"):
        load_dataset(f"npz:{write('a.npz', x_train=x, y_train=y, x_test=x)}")
    with pytest.raises(DataError, match="'y_train' has 3 labels but 'x_train' has 4"):
        load_dataset(f"npz:{write('b.npz', x_train=x, y_train=y[:3], x_test=x, y_test=y)}")
    with pytest.raises(DataError, match="'x_train' has shape"):
        load_dataset(f"npz:{write('c.npz', x_train=np.zeros(4), y_train=y, x_test=x, y_test=y)}")
    with pytest.raises(DataError, match="'x_test' samples have shape"):
        load_dataset(f"npz:{write('d.npz', x_train=x, y_train=y, x_test=np.zeros((4, 2, 2)), y_test=y)}")
    with pytest.raises(DataError, match="'y_train' has dtype float"):
        load_dataset(f"npz:{write('e.npz', x_train=x, y_train=y + 0.5, x_test=x, y_test=y)}")
    with pytest.raises(DataError, match="'x_test' holds no samples"):
        load_dataset(f"npz:{write('f.npz', x_train=x, y_train=y, x_test=x[:0], y_test=y[:0])}")
    (tmp_path / "g.npz").write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(DataError, match="g.npz"):
        load_dataset(f"npz:{tmp_path / 'g.npz'}")
    with pytest.raises(MissingDataError, match="h.npz"):
        load_dataset(f"npz:{tmp_path / 'h.npz'}")
    with pytest.raises(ValueError, match="npz needs a file"):
        load_dataset("npz")


# --------------------------------------------------------------------------- CIFAR


def _cifar_batch(path, n, seed, label_keys=("labels",), n_classes=10):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
    d = {b"data": data, b"batch_label": b"synthetic"}
    for k in label_keys:
        d[k.encode()] = [int(v) for v in rng.integers(0, n_classes, n)]
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)
    return data, d


def test_cifar10_reader_on_synthetic_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = [_cifar_batch(folder / f"data_batch_{i}", 3, i) for i in range(1, 6)]
    test_data, test_dict = _cifar_batch(folder / "test_batch", 4, 9)
    for spec in (f"cifar10:{tmp_path}", f"cifar10:{folder}"):  # the parent or the folder itself
        b = load_dataset(spec)
        assert (len(b.train), len(b.test)) == (15, 4) and b.input_shape == (3, 32, 32) and b.n_classes == 10
        x, y = b.test[2]
        assert y == test_dict[b"labels"][2]
        assert torch.equal(x, torch.from_numpy(test_data[2].reshape(3, 32, 32) / 255.0).float())
        x, _ = b.train[3]  # the first image of data_batch_2
        assert torch.equal(x, torch.from_numpy(batches[1][0][0].reshape(3, 32, 32) / 255.0).float())


def test_cifar100_labels_option(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _, train = _cifar_batch(folder / "train", 6, 0, ("fine_labels", "coarse_labels"), 20)
    _cifar_batch(folder / "test", 2, 1, ("fine_labels", "coarse_labels"), 20)
    fine = load_dataset(f"cifar100:{tmp_path}")
    coarse = load_dataset(f"cifar100:{tmp_path}", labels="coarse")
    assert fine.n_classes == 100 and coarse.n_classes == 20
    assert [fine.train[i][1] for i in range(6)] == train[b"fine_labels"]
    assert [coarse.train[i][1] for i in range(6)] == train[b"coarse_labels"]


def test_cifar_corrupt_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        _cifar_batch(folder / f"data_batch_{i}", 2, i)
    _cifar_batch(folder / "test_batch", 2, 0)
    raw = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="data_batch_3.*truncated or corrupt"):
        load_dataset(f"cifar10:{folder}")
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataError, match="data_batch_3.*'data' is a uint8 array \\(2, 100\\)"):
        load_dataset(f"cifar10:{folder}")
    with open(folder / "data_batch_3", "wb") as f:  # a pickle that would run a command
        pickle.dump({b"data": os.getcwd}, f)
    with pytest.raises(DataError, match="refusing to load"):
        load_dataset(f"cifar10:{folder}")


# --------------------------------------------------------------------------- encoders


def test_encode_direct_and_shapes():
    x = torch.rand(3, 1, 4, 4)
    out = encode(x, 5)
    assert out.shape == (5, 3, 1, 4, 4) and all(torch.equal(out[t], x) for t in range(5))
    assert encode(x, 2, "poisson").shape == (2, 3, 1, 4, 4)
    assert encode(x, 2, "latency").shape == (2, 3, 1, 4, 4)
    with pytest.raises(ValueError, match="direct, poisson, latency"):
        encode(x, 2, "rate")
    with pytest.raises(ValueError, match="time_steps"):
        encode(x, 0)


def test_encode_poisson_rate_matches_value():
    x = torch.tensor([[0.0, 0.1, 0.5, 0.9, 1.0]])
    g = torch.Generator().manual_seed(0)
    out = encode(x, 4000, "poisson", generator=g)
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(out.mean(0), x, atol=0.03)
    assert out[:, 0, 0].sum() == 0 and out[:, 0, 4].sum() == 4000
    again = encode(x, 4000, "poisson", generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_encode_latency_timing():
    x = torch.tensor([[1.0, 0.0, 0.3, 0.7]])
    out = encode(x, 11, "latency")  # steps round((1 - v) * 10): 0, none, 7, 3
    assert out.sum(0).tolist() == [[1.0, 0.0, 1.0, 1.0]]
    assert out[0, 0, 0] == 1 and out[7, 0, 2] == 1 and out[3, 0, 3] == 1


def test_nmnist_resplit_pools_and_stratifies_by_seed(shared_dir):
    d = shared_dir / "data" / "nmnist-small"
    if not (d / "Train").is_dir():
        pytest.skip("../shared/data/nmnist-small is absent")
    from chsnn.data import load_dataset

    official = load_dataset(f"nmnist:{d}")
    a = load_dataset(f"nmnist:{d}", resplit="0.2", seed=1)
    b = load_dataset(f"nmnist:{d}", resplit="0.2", seed=2)
    total = len(official.train) + len(official.test)
    assert len(a.train) + len(a.test) == total and len(a.test) == round(0.2 * total)
    assert set(a.train.indices.tolist()).isdisjoint(a.test.indices.tolist())
    assert a.test.indices.tolist() != b.test.indices.tolist()  # another seed, another split
    counts = np.bincount(a.test.targets.numpy(), minlength=10)
    assert counts.min() > 0 and counts.sum() == len(a.test)  # every class, in proportion (stratified)
    x, y = a.test[0]
    assert x.shape == (8, 2, 34, 34) and y == int(a.test.targets[0])
    with pytest.raises(ValueError, match="resplit"):
        load_dataset(f"nmnist:{d}", resplit="1.5")
    v = load_dataset(f"nmnist:{d}", resplit="0.2", seed=1, validation="0.2")  # tuning: part of a's train, none of its test
    assert set(v.test.indices.tolist()) <= set(a.train.indices.tolist()) and len(v.train) + len(v.test) == len(a.train)
    x, y = v.test[0]
    assert x.shape == (8, 2, 34, 34) and y == int(v.test.targets[0])


def test_nmnist_kfold_tests_every_recording_once_over_k_seeds(shared_dir):
    d = shared_dir / "data" / "nmnist-small"
    if not (d / "Train").is_dir():
        pytest.skip("../shared/data/nmnist-small is absent")
    from chsnn.data import load_dataset

    folds = [load_dataset(f"nmnist:{d}", kfold="5", seed=s) for s in range(5)]
    total = len(folds[0].train) + len(folds[0].test)
    tested = np.concatenate([b.test.indices for b in folds])
    assert np.array_equal(np.sort(tested), np.arange(total))  # each recording tested exactly once
    for b in folds:
        assert set(b.train.indices.tolist()).isdisjoint(b.test.indices.tolist())
        assert len(b.train) + len(b.test) == total and "5-fold" in b.note
    again = load_dataset(f"nmnist:{d}", kfold="5", seed=5)  # seed 5: fold 0 of a new partition
    assert again.test.indices.tolist() != folds[0].test.indices.tolist()
    with pytest.raises(ValueError, match="not both"):
        load_dataset(f"nmnist:{d}", kfold="5", resplit="0.2")
    assert load_dataset(f"nmnist:{d}", kfold=5, seed=1).test.indices.tolist() == folds[1].test.indices.tolist()
    for bad in ("1", "five", "2.5", 2.5, True):
        with pytest.raises(ValueError, match="kfold="):
            load_dataset(f"nmnist:{d}", kfold=bad)


def test_validation_holds_out_part_of_train_and_never_reads_test(cache_root):
    """The tuning split: a stratified, seeded share of the training set becomes the
    evaluation set; the test set is not part of the bundle at all."""
    from chsnn.data import load_dataset

    full = load_dataset("ndigits", seed=3, root=cache_root)
    val = load_dataset("ndigits", seed=3, root=cache_root, validation="0.25")
    assert len(val.train) + len(val.test) == len(full.train) and len(val.test) == round(0.25 * len(full.train))
    train_ids, held_ids, test_ids = (set(d.indices.tolist()) for d in (val.train, val.test, full.test))
    assert train_ids.isdisjoint(held_ids) and (train_ids | held_ids) == set(full.train.indices.tolist())
    assert not (held_ids | train_ids) & test_ids  # nothing of the test set is trained or evaluated on
    counts = np.bincount(val.test.targets.numpy(), minlength=10)
    assert counts.min() > 0  # every class is in the held-out part (stratified)
    x, y = val.test[0]
    assert torch.equal(x, torch.as_tensor(val.test.tensors()[0][0])) and y == int(val.test.targets[0])
    assert "validation run" in val.note
    again = load_dataset("ndigits", seed=3, root=cache_root, validation=0.25)  # a YAML number works too
    assert again.test.indices.tolist() == val.test.indices.tolist()
    other = load_dataset("ndigits", seed=4, root=cache_root, validation="0.25")
    assert other.test.indices.tolist() != val.test.indices.tolist()
    for bad in ("0", "1.5", "a fifth", True):
        with pytest.raises(ValueError, match="validation"):
            load_dataset("ndigits", seed=3, root=cache_root, validation=bad)


# --------------------------------------------------------------------------- the dataset registry


def doc_example() -> str:
    """The code block of docs/extending_dataset.md (the README's example)."""
    return re.search(r"```python\n(.*?)```", EXTENDING_DOC.read_text(), re.S).group(1)


@pytest.fixture
def blobs():
    """The docs' example registered; removed again afterwards."""
    exec(doc_example(), {})
    yield dataset_info("blobs")
    unregister_dataset("blobs")


def test_custom_dataset_from_the_docs_trains(blobs, tmp_path, capsys):
    from chsnn.cli import main

    assert len(doc_example().strip().splitlines()) <= 15
    assert DATASETS["blobs"] == "Two Gaussian blobs in 4-D, one per class."  # the docstring's first line
    assert DATASET_SHAPES["blobs"] == ((4,), 2, "static") and not blobs.takes_path
    out = tmp_path / "run"
    args = ["train", "--data", "blobs", "--set", "model_options.hidden=[16]", "--max-steps", "2", "--out", str(out), "--quiet"]
    assert main(args) == 0, capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "blobs" and summary["steps"] == 2
    assert summary["layers"][0]["shape"] == [16, 4]  # the blobs' 4 features in, no built-in set has those
    with pytest.raises(ValueError, match="blobs is built in and takes no path"):
        load_dataset("blobs:/tmp")
    assert smoke_data("blobs", 3) == (
        "random",
        {"input_shape": [4], "n_classes": 2, "kind": "static", "time_steps": None, "n_train": 16, "n_test": 8},
    )


def test_registering_a_taken_name_or_alias_is_refused(blobs):
    before = dict(DATASETS)
    with pytest.raises(ValueError, match="dataset 'blobs' is already registered; .*unregister_dataset\\('blobs'\\)"):
        exec(doc_example(), {})
    with pytest.raises(ValueError, match="dataset 'mnist' is already registered; pick another name"):
        register_dataset("mnist")(blobs.loader)
    with pytest.raises(ValueError, match="dataset name 'fmnist' is already taken, as an alias of 'fashion-mnist'"):
        register_dataset("my-mnist", aliases=("fmnist",))(blobs.loader)
    with pytest.raises(ValueError, match="'n-mnist' is already taken, as an alias of 'nmnist'"):  # a name taken as an alias
        register_dataset("n-mnist")(blobs.loader)
    with pytest.raises(ValueError, match="repeat one another"):
        register_dataset("twice", aliases=("twice",))(blobs.loader)
    with pytest.raises(ValueError, match="lower-case"):
        register_dataset("Blobs2")(blobs.loader)
    assert DATASETS == before  # nothing half-registered
    assert dataset_info("fmnist").name == "fashion-mnist"
    unregister_dataset("blobs")
    exec(doc_example(), {})  # free again once unregistered
    assert dataset_info("BLOBS").loader is not blobs.loader


def test_custom_dataset_options_and_checks(tmp_path):
    @register_dataset("shifted", aliases=("shift",), input_shape=(3,), n_classes=2, kind="events")
    def load_shifted(request, *, offset="0"):
        """Event frames of 3 channels, every count `offset`."""
        assert request.directory == (request.path or tmp_path / "shifted")
        x = torch.full((4, request.time_steps, 3), float(offset))
        y = torch.tensor([0, 1, 0, 1])
        width = 3 if offset != "9" else 5  # offset 9: a loader that breaks its promise
        return DataBundle("shifted", ArrayDataset(x[..., :width], y), ArrayDataset(x, y), (width,), 2, request.time_steps, "events")

    try:
        assert dataset_info("shifted").options == {"offset": "0"}
        b = load_dataset("Shift", root=tmp_path, offset="2")
        assert b.time_steps == 8 and float(b.train[0][0].mean()) == 2.0  # event sets get 8 frames by default
        assert load_dataset(f"shifted:{tmp_path}", time_steps=3).train[0][0].shape == (3, 3)
        with pytest.raises(
            ValueError, match="unknown option 'colour' for dataset 'shifted'; valid options: time_steps, seed, root, validation, offset"
        ):
            load_dataset("shifted", root=tmp_path, colour="red")
        with pytest.raises(ValueError, match="option 'offset' must be a string, got 2"):
            load_dataset("shifted", root=tmp_path, offset=2)
        with pytest.raises(ValueError, match="returned events data of input_shape \\(5,\\), but the set is registered as events \\(3,\\)"):
            load_dataset("shifted", root=tmp_path, offset="9")
    finally:
        unregister_dataset("shift")
    with pytest.raises(ValueError, match="unknown dataset 'shifted'"):
        load_dataset("shifted")
    with pytest.raises(TypeError, match="option 'offset' needs a default"):
        register_dataset("bad")(lambda request, *, offset: None)
    with pytest.raises(ValueError, match="input_shape, n_classes and kind together"):
        register_dataset("bad", input_shape=(3,), n_classes=2)(load_shifted)
    assert "bad" not in DATASETS
