"""Re-exported from ``ccgsc_worker.secagg.graph``: one implementation for the server and the edge
worker (the worker package cannot import ``jobs``)."""

from ccgsc_worker.secagg.graph import *  # noqa: F403
