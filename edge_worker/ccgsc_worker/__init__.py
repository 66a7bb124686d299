"""CCGSC edge worker: runs hash-pinned WebAssembly kernels outside the browser."""

__version__ = "1.0.0"
