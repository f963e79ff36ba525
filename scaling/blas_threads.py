"""Runs many tiny optimizations without BLAS thread overhead.

scipy's L-BFGS-B calls BLAS on 5-vectors; with a multi-threaded OpenBLAS each call pays a
thread hand-off that, on a busy machine, costs ~10x the optimization itself.
"""

from threadpoolctl import threadpool_limits


def single_threaded_blas():
    """Context manager limiting BLAS to one thread."""
    return threadpool_limits(limits=1, user_api="blas")
