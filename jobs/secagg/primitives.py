"""Re-exported from ``ccgsc_worker.secagg.primitives``: one implementation for the server and the edge
worker (the worker package cannot import ``jobs``)."""

from ccgsc_worker.secagg.primitives import *  # noqa: F403
