"""Re-exported from ``ccgsc_worker.secagg.encoding``: one implementation for the server and the edge
worker (the worker package cannot import ``jobs``)."""

from ccgsc_worker.secagg.encoding import *  # noqa: F403
