"""Helpers for the course: a modern, fast drop-in for the parts of d2l's PyTorch helpers it uses.

Code written for the book runs unchanged with ``import d2l_utils as d2l``::

    import d2l_utils as d2l
    train_iter, test_iter = d2l.load_data_fashion_mnist(256, resize=96)
    d2l.train_ch6(net, train_iter, test_iter, 10, 0.05, d2l.try_gpu())

The models the notebooks build live in their own modules (``from d2l_utils.resnet import
Residual``); the run profiles (``D2L_PROFILE=smoke|quick|full``) in :mod:`d2l_utils.profiles`.
"""

from d2l_utils.checkpoint import CheckpointError
from d2l_utils.data import (
    BatchLoader,
    ChecksumError,
    DataAccessError,
    DataFileError,
    DataRootError,
    DatasetNotFoundError,
    get_fashion_mnist_labels,
    load_data,
    load_data_fashion_mnist,
)
from d2l_utils.device import cpu, num_gpus, try_all_gpus, try_gpu
from d2l_utils.plot import Animator, set_axes, show_images
from d2l_utils.profiles import Profile, get_profile
from d2l_utils.resnet import Residual
from d2l_utils.results import record_result
from d2l_utils.train import (
    Accumulator,
    DivergenceError,
    History,
    Timer,
    accuracy,
    evaluate_accuracy_gpu,
    init_weights,
    train_ch6,
)

__version__ = "0.1.0"

__all__ = [
    "Accumulator",
    "Animator",
    "BatchLoader",
    "CheckpointError",
    "ChecksumError",
    "DataAccessError",
    "DataFileError",
    "DataRootError",
    "DatasetNotFoundError",
    "DivergenceError",
    "History",
    "Profile",
    "Residual",
    "Timer",
    "accuracy",
    "cpu",
    "evaluate_accuracy_gpu",
    "get_fashion_mnist_labels",
    "get_profile",
    "init_weights",
    "load_data",
    "load_data_fashion_mnist",
    "num_gpus",
    "record_result",
    "set_axes",
    "show_images",
    "train_ch6",
    "try_all_gpus",
    "try_gpu",
]
