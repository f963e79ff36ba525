"""Settings for a pytest run, inherited by the train.py subprocesses that tests start.

- Each test is marked with its group, the folder it lives in: `unit` (one module, fast),
  `parity` (against reference implementations and papers) or `integration` (train.py runs,
  fault injection, compiled steps on fake devices); `pytest tests/parity` runs one group.

- A persistent XLA compilation cache shared by every test, so the same tiny model is compiled
  once per run.
- Everything runs on the CPU (JAX_PLATFORMS=cpu): libtpu, which the test extra installs for the
  ahead-of-time TPU compiles, would otherwise probe for a TPU at every start of jax.
- XLA:CPU compiles at optimization level 0: the tests' models are tiny, so this costs little run
  time, and it cuts compile time several-fold (XLA:CPU spends minutes optimizing the unrolled
  threefry kernels of random initializers).
"""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = " ".join(
    filter(None, [os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"])
)

import jax
import pytest

CACHE_DIR = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "jax-test-compile-cache")
)
# Read by jax at import in subprocesses too.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


@pytest.fixture
def workdir(tmp_path):
    return str(tmp_path / "run")


def pytest_addoption(parser):
    parser.addoption("--fault-restarts", type=int, default=2,
                     help="kill -9 faults injected by tests/integration/test_reliability.py")
    parser.addoption("--fault-seed", type=int, default=0,
                     help="seed of the moments at which those faults are injected")


GROUPS = ("unit", "parity", "integration")


def pytest_collection_modifyitems(items):
    for item in items:
        group = item.path.parent.name
        if group not in GROUPS:
            raise pytest.UsageError(f"{item.nodeid} is in none of tests/{{{','.join(GROUPS)}}}.")
        item.add_marker(group)
