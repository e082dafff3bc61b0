"""The course's data path and training loop timed against the textbook's (``make bench``).

Run from the repository root: ``python -m benchmarks.bench --quick``; ``--help`` lists the
options.  Not part of the installed package: the modules are

* :mod:`benchmarks.bench`: the command line;
* :mod:`benchmarks.cases`: which models are timed, with the book's settings;
* :mod:`benchmarks.textbook`: the textbook's data path (torchvision ``FashionMNIST`` +
  ``DataLoader``); its loop is :mod:`benchmarks.reference`, shared with the tests;
* :mod:`benchmarks.machine`: the device's name, synchronisation and matrix-multiply peak;
* :mod:`benchmarks.timing`: the timed runs of both paths and what they give per model;
* :mod:`benchmarks.accuracy`: both paths trained to the end, to compare test accuracy;
* :mod:`benchmarks.report`: ``bench.json`` and the markdown tables.
"""
