import os

# Tests build tiny models; keep TensorFlow's logs and thread pools small on CI machines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One OpenMP thread per test worker (and the processes it starts): with two workers on two
    # cores, PyTorch's two threads per process wait on each other, and a micro HRViT's train
    # step took 7.8 s instead of 0.12 s. TensorFlow and XLA use their own pools (measured: no
    # gain from one thread there). Set before the first import of torch, which reads it.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# XLA reads its flags when it first compiles: set before keras (and jax) are imported.
from reference import with_fast_xla_flags  # noqa: E402

os.environ["XLA_FLAGS"] = " ".join(with_fast_xla_flags(os.environ.get("XLA_FLAGS", "").split()))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_clear():
    keras.utils.set_random_seed(0)
    np.random.seed(0)
    yield
    keras.backend.clear_session()
