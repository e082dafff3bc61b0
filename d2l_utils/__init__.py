"""Helpers for the course: a modern, fast drop-in for the parts of d2l's PyTorch helpers it uses.

Code written for the book runs unchanged with ``import d2l_utils as d2l``::

    import d2l_utils as d2l
    train_iter, test_iter = d2l.load_data_fashion_mnist(256, resize=96)
    d2l.train_ch6(net, train_iter, test_iter, 10, 0.05, d2l.try_gpu())

This namespace holds the book's names, the course's loader (``load_data``, ``BatchLoader``), the
run profile (``get_profile``), what ``train_ch6`` returns (``History``) and the exceptions a
learner may catch.  Everything else is in its module: the networks in :mod:`d2l_utils.models`,
the chapters' extras in :mod:`~d2l_utils.analysis`, :mod:`~d2l_utils.memory`,
:mod:`~d2l_utils.transfer`, :mod:`~d2l_utils.distributed`, :mod:`~d2l_utils.stats`; the
long-run bookkeeping in :mod:`d2l_utils.robust` (see CONTRIBUTING.md for the layout).
"""

from d2l_utils.checkpoint import CheckpointError
from d2l_utils.data import (
    BatchLoader,
    get_fashion_mnist_labels,
    get_profile,
    load_data,
    load_data_fashion_mnist,
)
from d2l_utils.device import cpu, num_gpus, try_all_gpus, try_gpu
from d2l_utils.fashion_mnist import (
    ChecksumError,
    DataAccessError,
    DataFileError,
    DataRootError,
    DatasetNotFoundError,
)
from d2l_utils.models.resnet import Residual
from d2l_utils.plot import Animator, set_axes, show_images
from d2l_utils.robust import DivergenceError
from d2l_utils.train import (
    Accumulator,
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
    "set_axes",
    "show_images",
    "train_ch6",
    "try_all_gpus",
    "try_gpu",
]
