"""pyllm: a small GPT-2 style language model written from scratch.

C99 + OpenMP kernels bound through cffi, with a pure-NumPy backend that does the same work wherever
the C extension cannot be built. See README.md.
"""
__version__ = "0.1.0"

from .backend import (BackendUnavailable, available_backends, backend_reason, get_backend,
                      get_num_threads, set_backend, set_num_threads)

__all__ = ["__version__", "BackendUnavailable", "available_backends", "backend_reason",
           "get_backend", "get_num_threads", "set_backend", "set_num_threads"]
