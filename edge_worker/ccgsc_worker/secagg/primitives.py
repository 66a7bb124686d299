"""Cryptographic primitives of secure aggregation, chosen so WebCrypto gives identical bytes.

X25519 key agreement, HKDF-SHA256 key derivation bound to the session, AES-256-CTR mask
expansion read as little-endian uint32, AES-GCM share encryption, and Shamir t-of-k sharing of
32-byte secrets over the prime field GF(2^256 + 297). `static/worker_frontend/secagg-primitives.js` is
the browser twin of this module; `tests/secagg/test_js_parity.py` checks they agree byte for byte.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

RandomBytes = Callable[[int], bytes]

# The smallest prime above 2^256: every 32-byte secret is a field element without reduction.
PRIME = 2**256 + 297
SHARE_BYTES = 33
KEY_BYTES = 32
LABEL_SHARE_KEY = b"ccgsc/secagg/v1/share-key"
LABEL_PAIR_MASK = b"ccgsc/secagg/v1/pair-mask"
PHASE_SHARE_KEYS = 1
PHASE_MASKED_INPUT = 2
# Coefficients are drawn from this many random bytes and reduced mod PRIME: bias below 2^-60.
_COEFFICIENT_BYTES = 40


def keypair_from_seed(seed: bytes) -> tuple[bytes, bytes]:
    """(private, public) raw 32-byte X25519 keys from 32 random bytes."""
    private = X25519PrivateKey.from_private_bytes(seed)
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return seed, public


def keypair_generate(random_bytes: RandomBytes = os.urandom) -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as raw bytes."""
    return keypair_from_seed(random_bytes(KEY_BYTES))


def agree(private: bytes, peer_public: bytes) -> bytes:
    """The X25519 shared secret (32 bytes); rejects low-order peer keys (all-zero output)."""
    key = X25519PrivateKey.from_private_bytes(private)
    return key.exchange(X25519PublicKey.from_public_bytes(peer_public))


def derivation_info(
    *, label: bytes, id_a: int, id_b: int, job: str, round_number: int, phase: int
) -> bytes:
    """HKDF info: label ‖ 0 ‖ u32 lower id ‖ u32 higher id ‖ u16 len ‖ job ‖ u32 round ‖ u8 phase."""
    low, high = sorted((id_a, id_b))
    job_bytes = job.encode()
    return (
        label
        + b"\x00"
        + struct.pack(">IIH", low, high, len(job_bytes))
        + job_bytes
        + struct.pack(">IB", round_number, phase)
    )


def derive_key(*, shared: bytes, session_id: bytes, info: bytes) -> bytes:
    """HKDF-SHA256(shared, salt=session id, info) → 32-byte key."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=session_id, info=info).derive(
        shared
    )


def expand_mask(key: bytes, length: int, *, start: int = 0) -> np.ndarray:
    """Coordinates [start, start+length) of the mask: AES-256-CTR keystream as LE uint32.

    The keystream starts from an all-zero counter block, so coordinate c is word c % 4 of block
    c // 4; starting at any coordinate lets several workers expand disjoint ranges.
    Returns shape (length,), dtype uint32.
    """
    if length <= 0:
        return np.zeros(0, dtype=np.uint32)
    first_block, skip = divmod(start, 4)
    blocks = (skip + length + 3) // 4
    counter = first_block.to_bytes(16, "big")
    encryptor = Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor()
    stream = encryptor.update(bytes(blocks * 16))
    return np.frombuffer(stream, dtype="<u4")[skip : skip + length].astype(np.uint32, copy=False)


# Coordinates per chunk when applying many masks: 64 KiB of keystream stays in cache while it is
# added, and the buffers are reused, so no mask is ever materialised whole.
_CHUNK = 16384


def add_masks_inplace(
    target: np.ndarray, keys: Sequence[bytes], signs: Sequence[int], *, start: int = 0
) -> None:
    """target += Σ sign · mask(key)[start : start + len(target)] in Z_2^32, chunk by chunk.

    target: (length,) uint32, modified in place. Equivalent to adding expand_mask(key,
    length, start=start) for each key, without allocating a mask per key.
    """
    if target.dtype != np.uint32 or target.ndim != 1:
        raise ValueError("target must be a 1-D uint32 array")
    first_block, skip = divmod(start, 4)
    counter = first_block.to_bytes(16, "big")
    encryptors = []
    for key in keys:
        encryptor = Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor()
        encryptor.update(bytes(4 * skip))  # CTR is a stream: drop the words before start
        encryptors.append(encryptor)
    zeros = bytes(4 * _CHUNK)
    buffer = bytearray(4 * _CHUNK + 15)  # update_into wants block-size − 1 spare bytes
    for offset in range(0, target.size, _CHUNK):
        length = min(_CHUNK, target.size - offset)
        words = np.frombuffer(buffer, dtype="<u4", count=length)
        piece = target[offset : offset + length]
        source = zeros if length == _CHUNK else zeros[: 4 * length]
        for encryptor, sign in zip(encryptors, signs, strict=True):
            encryptor.update_into(source, buffer)
            if sign > 0:
                np.add(piece, words, out=piece)
            else:
                np.subtract(piece, words, out=piece)


def share_nonce(*, sender: int, receiver: int) -> bytes:
    """12-byte GCM nonce u32 sender ‖ u32 receiver ‖ 4 zero bytes.

    The key is unique to the pair, job, round and phase, and each direction sends one message
    under it, so the nonce never repeats for a key.
    """
    return struct.pack(">II", sender, receiver) + bytes(4)


def share_associated_data(*, sender: int, receiver: int, job: str, round_number: int) -> bytes:
    """GCM associated data binding the ciphertext to sender, receiver, job and round."""
    job_bytes = job.encode()
    return (
        struct.pack(">IIH", sender, receiver, len(job_bytes))
        + job_bytes
        + struct.pack(">I", round_number)
    )


def encrypt_shares(
    *, key: bytes, sender: int, receiver: int, job: str, round_number: int, plaintext: bytes
) -> bytes:
    """AES-256-GCM ciphertext ‖ tag of one neighbour's shares."""
    return AESGCM(key).encrypt(
        share_nonce(sender=sender, receiver=receiver),
        plaintext,
        share_associated_data(sender=sender, receiver=receiver, job=job, round_number=round_number),
    )


def decrypt_shares(
    *, key: bytes, sender: int, receiver: int, job: str, round_number: int, ciphertext: bytes
) -> bytes:
    """Inverse of encrypt_shares; raises cryptography's InvalidTag on any tampering."""
    return AESGCM(key).decrypt(
        share_nonce(sender=sender, receiver=receiver),
        ciphertext,
        share_associated_data(sender=sender, receiver=receiver, job=job, round_number=round_number),
    )


# Shamir sharing. Field elements are Python ints held in numpy object arrays, so sharing m
# secrets to k holders is one (k × t) @ (t × m) matrix product and reconstruction one dot
# product per secret, with no Python loop per share or per coordinate.


def shamir_share(
    secrets: Sequence[bytes], xs: Sequence[int], threshold: int, random_bytes: RandomBytes
) -> np.ndarray:
    """Shares of each 32-byte secret for holders at xs (non-zero, distinct): shape (k, m).

    Polynomial coefficients (t − 1 per secret, constant term the secret) are read in order
    secret by secret from random_bytes, 40 bytes each, reduced mod PRIME.
    """
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} needs 1..{len(xs)} holders")
    if len(set(xs)) != len(xs) or any(x % PRIME == 0 for x in xs):
        raise ValueError("holder x-coordinates must be distinct and non-zero")
    if any(len(secret) != KEY_BYTES for secret in secrets):
        raise ValueError("secrets are 32 bytes")
    drawn = random_bytes(_COEFFICIENT_BYTES * (threshold - 1) * len(secrets))
    randoms = [
        int.from_bytes(drawn[i : i + _COEFFICIENT_BYTES], "big") % PRIME
        for i in range(0, len(drawn), _COEFFICIENT_BYTES)
    ]
    coefficients = np.empty((threshold, len(secrets)), dtype=object)
    coefficients[0] = [int.from_bytes(secret, "big") for secret in secrets]
    if threshold > 1:
        coefficients[1:] = np.array(randoms, dtype=object).reshape(len(secrets), threshold - 1).T
    # Vandermonde rows [1, x, x², …] built one degree at a time for all holders at once.
    holders = np.array(list(xs), dtype=object)
    powers = np.empty((len(xs), threshold), dtype=object)
    powers[:, 0] = 1
    for degree in range(1, threshold):
        powers[:, degree] = powers[:, degree - 1] * holders % PRIME
    return (powers @ coefficients) % PRIME


def lagrange_at_zero(xs: Sequence[int]) -> np.ndarray:
    """Lagrange basis values at 0 for distinct xs, mod PRIME: shape (t,), dtype object.

    λ_i = Π_{j≠i} x_j / (x_j − x_i), as one (t × t) table of factors with ones on the diagonal.
    """
    points = np.array(list(xs), dtype=object)
    numerators = np.tile(points, (len(points), 1))
    denominators = numerators - points[:, None]
    np.fill_diagonal(numerators, 1)
    np.fill_diagonal(denominators, 1)
    numerator = np.prod(numerators, axis=1) % PRIME
    denominator = np.prod(denominators, axis=1) % PRIME
    return np.array(
        [n * pow(int(d), -1, PRIME) % PRIME for n, d in zip(numerator, denominator, strict=True)],
        dtype=object,
    )


def shamir_reconstruct(xs: Sequence[int], shares: Sequence[int]) -> int:
    """The secret (constant term) from t shares at distinct xs."""
    if len(xs) != len(shares) or len(set(xs)) != len(xs):
        raise ValueError("need one share per distinct x")
    return int(np.dot(lagrange_at_zero(xs), np.array(list(shares), dtype=object)) % PRIME)


def secret_from_int(value: int) -> bytes:
    """A reconstructed field element back to its 32-byte secret; raises if it is not one."""
    if not 0 <= value < 2**256:
        raise ValueError("reconstructed value is not a 32-byte secret")
    return value.to_bytes(KEY_BYTES, "big")


def share_to_bytes(value: int) -> bytes:
    """A share as 33 big-endian bytes."""
    return int(value).to_bytes(SHARE_BYTES, "big")


def share_from_bytes(data: bytes) -> int:
    """Inverse of share_to_bytes."""
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise ValueError("share out of field")
    return value
