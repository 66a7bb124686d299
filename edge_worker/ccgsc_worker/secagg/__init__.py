"""Secure aggregation (SecAgg+), client side and shared maths: pure, no Django, no I/O.

primitives: X25519, HKDF, AES-CTR masks, AES-GCM, Shamir; encoding: fixed point in Z_2^32;
graph: the public neighbour graph; client: one client's state machine; wire: that client driven
by the protocol's ``secagg_*`` messages. The server (``jobs.secagg``) imports these modules, so
the server and the edge worker share one implementation.
"""
