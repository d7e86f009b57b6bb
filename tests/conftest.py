"""Shared test set-up: one thread (timings on a shared 2-core machine swing wildly)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the torch-free runtime tests run without it
    pass
