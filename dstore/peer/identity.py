"""A peer's persistent Ed25519 identity and its libp2p-style peer ID.

The key lives in ``<home>/identity.key`` (PKCS#8 PEM, mode 0600), created on
first start. The peer ID is what libp2p calls it: base58btc of the identity
multihash (code 0x00) of the protobuf ``PublicKey{Type: Ed25519, Data: key}``,
so it starts with ``12D3KooW``. Clients rank peers by peer ID, so a peer keeps
its place when its address changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dstore.errors import StoreError
from dstore.store.shards import write_atomically

__all__ = ["Identity", "b58encode", "load_or_create_identity", "peer_id_from_public_key"]

IDENTITY_FILE = "identity.key"

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

# protobuf PublicKey: field 1 (Type, varint) = 1 (Ed25519); field 2 (Data, bytes) of 32 bytes.
_ED25519_PUBKEY_PREFIX = bytes([0x08, 0x01, 0x12, 0x20])
_IDENTITY_MULTIHASH = 0x00


def b58encode(data: bytes) -> str:
    """base58btc (Bitcoin alphabet) without a multibase prefix; leading zero bytes become ``1``."""
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58_ALPHABET[r])
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(out))


def peer_id_from_public_key(raw_public_key: bytes) -> str:
    """libp2p peer ID of a 32-byte Ed25519 public key (``12D3KooW…``)."""
    if len(raw_public_key) != 32:
        raise ValueError(f"an Ed25519 public key has 32 bytes, got {len(raw_public_key)}")
    proto = _ED25519_PUBKEY_PREFIX + raw_public_key
    return b58encode(bytes([_IDENTITY_MULTIHASH, len(proto)]) + proto)


@dataclass(frozen=True)
class Identity:
    private_key: Ed25519PrivateKey
    peer_id: str

    @property
    def public_key_bytes(self) -> bytes:
        return self.private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _from_key(key: Ed25519PrivateKey) -> Identity:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return Identity(key, peer_id_from_public_key(raw))


def load_or_create_identity(home: Path) -> Identity:
    """The identity kept in ``home``, created (atomically, mode 0600) on first use."""
    path = home / IDENTITY_FILE
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        pem = None
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e.strerror or e}") from e
    if pem is not None:
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except ValueError as e:
            raise StoreError(f"{path} is not a PEM private key: {e}") from e
        if not isinstance(key, Ed25519PrivateKey):
            raise StoreError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
        return _from_key(key)

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_private_file(path, pem)
    return _from_key(key)


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, durably and atomically (tmp + fsync + rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)  # left by an earlier crash of this same pid
        write_atomically(path, tmp, [data], 0o600)
    except OSError as e:
        raise StoreError(f"cannot write {path}: {e.strerror or e}") from e
