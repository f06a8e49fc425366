"""The one exception hierarchy of dstore.

Each class is chosen by what the user can do next, and carries the CLI exit
code for it (documented in docs/cli.md). Foreign errors are translated once,
at the boundary, with ``raise ... from``. Only the CLI prints and exits.
"""

from __future__ import annotations


class DstoreError(Exception):
    """Base of every error dstore reports to a user."""

    exit_code = 1


class UsageError(DstoreError, ValueError):
    """Bad arguments or options: fix the command line."""

    exit_code = 2


class BadCID(UsageError):
    """Text or bytes that are not a valid CID, or a CID of the wrong kind."""


class NotFound(DstoreError, FileNotFoundError):
    """A dataset, path or block that this store does not hold."""

    exit_code = 3


class InputError(DstoreError, OSError):
    """A local input path that is missing, unreadable or of an unsupported kind."""

    exit_code = 4


class FormatError(DstoreError, ValueError):
    """Bytes that claim to be a dstore/IPFS structure but are malformed."""

    exit_code = 5


class IntegrityError(DstoreError):
    """Stored bytes do not match their ID and could not be rebuilt."""

    exit_code = 6


class NotEnoughShards(IntegrityError):
    """Fewer than k good shards remain for some pack: data is lost here."""

    exit_code = 7


class StoreError(DstoreError, OSError):
    """The local store cannot be opened or written (permissions, disk full, lock)."""

    exit_code = 8


class PeerError(DstoreError):
    """Storage peers refused or failed a request and no other peer could stand in.

    ``status`` is the HTTP status when a peer answered (401: check the token;
    507: the peers are full), else None (unreachable: check ``--peers``).
    """

    exit_code = 9

    def __init__(self, message: str, *, status: int | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.url = url


class OutputError(DstoreError, OSError):
    """The output of get, export or cat cannot be written (disk full, I/O error, name the filesystem refuses)."""

    exit_code = 4
