"""The built-in data sets, one registry entry each, in listing order.

Each loader only translates the :class:`~chsnn.data.registry.DataRequest` into
its reader's arguments: the readers live in their own modules and the checks
common to every set in :func:`~chsnn.data.registry.load_dataset`.
"""

from __future__ import annotations

from chsnn.data import neuromorphic
from chsnn.data.cifar import load_cifar_bundle
from chsnn.data.digits import load_digits_bundle, load_ndigits_bundle
from chsnn.data.idx import load_idx_bundle
from chsnn.data.npzfile import load_npz_bundle
from chsnn.data.registry import DataRequest, register_dataset
from chsnn.data.synthetic import RANDOM_DEFAULTS, load_random_bundle

MNIST_SHAPE = (1, 28, 28)
CIFAR_SHAPE = (3, 32, 32)
DVS128_SHAPE = (2, 128, 128)


@register_dataset(
    "digits",
    description="scikit-learn's 8x8 handwritten digits, bundled (1797 images, 10 classes); static (1, 8, 8)",
    input_shape=(1, 8, 8),
    n_classes=10,
    kind="static",
    takes_path=False,
)
def load_digits(request: DataRequest):
    return load_digits_bundle(request.seed)


@register_dataset(
    "ndigits",
    description="digits through a simulated event camera, 3 saccades like N-MNIST (1797 recordings); events (T, 2, 30, 30); no download",
    input_shape=(2, 30, 30),
    n_classes=10,
    kind="events",
    takes_path=False,
)
def load_ndigits(request: DataRequest):
    return load_ndigits_bundle(request.seed, request.time_steps, request.root)


@register_dataset(
    "mnist",
    description="MNIST from IDX files (60k/10k, or the 10k test set alone split 8000/2000); static (1, 28, 28)",
    input_shape=MNIST_SHAPE,
    n_classes=10,
    kind="static",
)
def load_mnist(request: DataRequest, *, kfold: int = 0):
    return load_idx_bundle("mnist", request.directory, seed=request.seed, kfold=kfold)


@register_dataset(
    "fashion-mnist",
    description="Fashion-MNIST from IDX files (60k/10k); static (1, 28, 28)",
    aliases=("fashion_mnist", "fashionmnist", "fmnist"),
    input_shape=MNIST_SHAPE,
    n_classes=10,
    kind="static",
)
def load_fashion_mnist(request: DataRequest, *, kfold: int = 0):
    return load_idx_bundle("fashion-mnist", request.directory, seed=request.seed, kfold=kfold)


@register_dataset(
    "emnist",
    description="EMNIST from IDX files, option split= (default balanced: 47 classes); static (1, 28, 28)",
    input_shape=MNIST_SHAPE,
    n_classes=47,
    kind="static",  # classes of the default split
)
def load_emnist(request: DataRequest, *, split: str = "balanced", kfold: int = 0):
    return load_idx_bundle("emnist", request.directory, seed=request.seed, split=split, kfold=kfold)


@register_dataset(
    "cifar10",
    description="CIFAR-10 from the python pickle batches (50k/10k); static (3, 32, 32)",
    aliases=("cifar-10",),
    input_shape=CIFAR_SHAPE,
    n_classes=10,
    kind="static",
)
def load_cifar10(request: DataRequest):
    return load_cifar_bundle("cifar10", request.directory)


@register_dataset(
    "cifar100",
    description="CIFAR-100 from the python pickle files, option labels=fine|coarse (50k/10k); static (3, 32, 32)",
    aliases=("cifar-100",),
    input_shape=CIFAR_SHAPE,
    n_classes=100,
    kind="static",  # classes of the default, fine labels
)
def load_cifar100(request: DataRequest, *, labels: str = "fine"):
    return load_cifar_bundle("cifar100", request.directory, labels=labels)


@register_dataset(
    "nmnist",
    description="N-MNIST recordings, the dataset's binary event files (60k/10k); events (T, 2, 34, 34)",
    aliases=("n-mnist",),
    input_shape=(2, 34, 34),
    n_classes=10,
    kind="events",
)
def load_nmnist(request: DataRequest, *, resplit: str = "", kfold: int = 0):
    return neuromorphic.load_nmnist_bundle(request.directory, request.time_steps, request.seed, resplit, kfold)


@register_dataset(
    "dvsgesture",
    description="DVS128 Gesture via tonic, tonic's .npy release (11 gestures, official train/test); events (T, 2, 128, 128)",
    aliases=("dvs-gesture", "dvs128gesture", "dvs128-gesture"),
    input_shape=DVS128_SHAPE,
    n_classes=11,
    kind="events",
)
def load_dvsgesture(request: DataRequest):
    return neuromorphic.load_dvsgesture_bundle(request.directory, request.time_steps)


@register_dataset(
    "cifar10dvs",
    description="CIFAR10-DVS via tonic, AEDAT4 files (10k, split 9000/1000 by seed); events (T, 2, 128, 128)",
    aliases=("cifar10-dvs", "cifar-10-dvs"),
    input_shape=DVS128_SHAPE,
    n_classes=10,
    kind="events",
)
def load_cifar10dvs(request: DataRequest):
    return neuromorphic.load_cifar10dvs_bundle(request.directory, request.time_steps, request.seed)


@register_dataset(
    "shd",
    description="Spiking Heidelberg Digits via tonic, .h5 files (8156/2264, 20 classes); events (T, 700)",
    input_shape=(700,),
    n_classes=20,
    kind="events",
)
def load_shd(request: DataRequest):
    return neuromorphic.load_shd_bundle(request.directory, request.time_steps)


@register_dataset("npz", description="your own data: one .npz with x_train, y_train, x_test, y_test (static images or event frames)")
def load_npz(request: DataRequest):
    # The file's shape decides, and event frames must match time_steps only when it is given.
    return load_npz_bundle(request.path, request.time_steps)


@register_dataset(
    "random",
    description=(
        "seeded random data of any shape for smoke runs, options input_shape=, n_classes=, n_train=, n_test=, kind=; "
        "events when time_steps is given; no signal"
    ),
    takes_path=False,
    no_path_hint="give its shape with input_shape=",
)
def load_random(
    request: DataRequest,
    *,
    input_shape=RANDOM_DEFAULTS["input_shape"],
    n_classes=RANDOM_DEFAULTS["n_classes"],
    n_train=RANDOM_DEFAULTS["n_train"],
    n_test=RANDOM_DEFAULTS["n_test"],
    kind=RANDOM_DEFAULTS["kind"],
):
    return load_random_bundle(
        request.time_steps, request.seed, input_shape=input_shape, n_classes=n_classes, n_train=n_train, n_test=n_test, kind=kind
    )
