"""The contributor's worker page: join, run kernels in Web Workers, earn credits."""
