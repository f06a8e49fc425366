"""The manifest: a small DAG-CBOR block whose CID is the dataset ID.

Layout (docs/format.md, "Manifest")::

    {"type": "dstore/dataset", "version": 2, "profile": "dstore", "root": CID,
     "hash": "blake3",
     "chunker": {"name": "fastcdc-gear-v1" | "fixed-v1", "min": int, "avg": int, "max": int},
     "size": int, "entries": int, "meta": {text: text}?, "parent": CID?}

``size`` and ``entries`` (files + folders the tree yields, the root included)
are what a reader may spend: it fails as soon as the tree yields more.

Optional keys are omitted, never null. :meth:`Manifest.decode` validates every
field of untrusted bytes and raises FormatError with the field at fault.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dstore.errors import FormatError
from dstore.format import cbor
from dstore.format.cid import CID, DAG_CBOR, DAG_PB, HASH_CODES, HASH_NAMES, RAW
from dstore.limits import MAX_CHUNK_BYTES, MAX_MANIFEST_BYTES, MAX_META_VALUE_BYTES

__all__ = [
    "CHUNKER_NAME",
    "FIXED_CHUNKER_NAME",
    "MANIFEST_TYPE",
    "MANIFEST_VERSION",
    "MAX_MANIFEST_BYTES",
    "MAX_META_VALUE_BYTES",
    "META_KEYS",
    "IMPORTED_CHUNKER",
    "PROFILES",
    "PROFILE_CAR_IMPORT",
    "PROFILE_DSTORE",
    "PROFILE_UNIXFS_V1_2025",
    "RESERVED_PROFILES",
    "ChunkerParams",
    "Manifest",
    "Profile",
    "profile_named",
]

MANIFEST_TYPE = "dstore/dataset"
MANIFEST_VERSION = 2
#: How the tree was cut and laid out: FastCDC chunks, BLAKE3 (or sha2-256), 174-wide file nodes.
PROFILE_DSTORE = "dstore"
#: IPIP-0499's profile: fixed 1 MiB chunks, sha2-256, 1024-wide file nodes (CIDs equal Kubo's).
PROFILE_UNIXFS_V1_2025 = "unixfs-v1-2025"
#: A UnixFS DAG brought in from a CAR (``dstore import``): its chunks were cut by whatever made it.
PROFILE_CAR_IMPORT = "car-import"
PROFILES = frozenset({PROFILE_DSTORE, PROFILE_UNIXFS_V1_2025, PROFILE_CAR_IMPORT})
#: Named in docs/format.md for later versions; refused until they are implemented.
RESERVED_PROFILES: frozenset[str] = frozenset()
CHUNKER_NAME = "fastcdc-gear-v1"
#: Fixed-size chunks: ``min == avg == max`` is the size (the last chunk of a file is shorter).
FIXED_CHUNKER_NAME = "fixed-v1"
#: The chunker of a "car-import" dataset: min/avg/max are the sizes of the chunks as found (avg rounded down).
IMPORTED_CHUNKER = "imported"
META_KEYS = frozenset({"name", "license", "description"})
_U64_MAX = (1 << 64) - 1


@dataclass(frozen=True)
class ChunkerParams:
    """Parameters of ``fastcdc-gear-v1``: avg a power of two, 64 <= min < avg < max <= 16 MiB."""

    min: int = 16384
    avg: int = 65536
    max: int = 262144
    name: str = CHUNKER_NAME

    @classmethod
    def fixed(cls, size_bytes: int) -> ChunkerParams:
        """Chunks of exactly ``size_bytes`` (the last one of a file shorter)."""
        return cls(min=size_bytes, avg=size_bytes, max=size_bytes, name=FIXED_CHUNKER_NAME)

    def validate(self) -> None:
        """Raise ValueError unless these are parameters of a known chunker (or of imported chunks)."""
        if self.name == IMPORTED_CHUNKER:
            self._validate_imported()
            return
        if self.name not in (CHUNKER_NAME, FIXED_CHUNKER_NAME):
            raise ValueError(f"unknown chunker {self.name!r}")
        for k in ("min", "avg", "max"):
            if type(getattr(self, k)) is not int:
                raise ValueError(f"chunker {k} must be an integer")
        if self.name == FIXED_CHUNKER_NAME:
            if not (self.min == self.avg == self.max and 64 <= self.max <= MAX_CHUNK_BYTES):
                raise ValueError(
                    f"fixed chunker needs min == avg == max, 64 bytes to 16 MiB, got {self.min}/{self.avg}/{self.max}"
                )
            return
        if not (64 <= self.min < self.avg < self.max <= MAX_CHUNK_BYTES):
            raise ValueError(f"chunker needs 64 <= min < avg < max <= 16 MiB, got {self.min}/{self.avg}/{self.max}")
        if self.avg & (self.avg - 1):
            raise ValueError(f"chunker avg {self.avg} is not a power of two")

    def _validate_imported(self) -> None:
        for k in ("min", "avg", "max"):
            if type(getattr(self, k)) is not int:
                raise ValueError(f"chunker {k} must be an integer")
        if not (0 <= self.min <= self.avg <= self.max <= MAX_CHUNK_BYTES):
            raise ValueError(
                f"imported chunks need 0 <= min <= avg <= max <= 16 MiB, got {self.min}/{self.avg}/{self.max}"
            )

    def to_cbor(self) -> dict[str, Any]:
        return {"name": self.name, "min": self.min, "avg": self.avg, "max": self.max}


@dataclass(frozen=True)
class Profile:
    """What a profile fixes (docs/format.md, "Profiles"): hashes, chunker, file-node width."""

    name: str
    hashes: tuple[str, ...]  # allowed dataset hashes, the default first
    #: The chunker every dataset of this profile uses; None: the caller's FastCDC parameters.
    chunker: ChunkerParams | None
    links_per_node: int

    @property
    def default_hash(self) -> str:
        return self.hashes[0]


_PROFILES = {
    PROFILE_DSTORE: Profile(PROFILE_DSTORE, ("blake3", "sha2-256"), None, 174),
    PROFILE_UNIXFS_V1_2025: Profile(PROFILE_UNIXFS_V1_2025, ("sha2-256",), ChunkerParams.fixed(1 << 20), 1024),
    # Made by `dstore import`, never by `add`: the nodes came built, whatever their width.
    PROFILE_CAR_IMPORT: Profile(PROFILE_CAR_IMPORT, ("sha2-256", "blake3"), None, 0),
}


def profile_named(name: str) -> Profile:
    """The profile called ``name``; ValueError for one that is unknown or only reserved."""
    profile = _PROFILES.get(name)
    if profile is None:
        if name in RESERVED_PROFILES:
            raise ValueError(f"profile {name!r} is reserved for a later format version")
        raise ValueError(f"profile {name!r} is not one of {sorted(_PROFILES)}")
    return profile


@dataclass(frozen=True)
class Manifest:
    """A dataset manifest. ``cid`` (the dataset ID) is computed from :meth:`encode`."""

    root: CID
    size: int
    entries: int
    hash_name: str = "blake3"
    chunker: ChunkerParams = field(default_factory=ChunkerParams)
    meta: dict[str, str] = field(default_factory=dict)
    parent: CID | None = None
    profile: str = PROFILE_DSTORE

    def validate(self) -> None:
        """Raise ValueError naming the first field that breaks docs/format.md."""
        if self.profile not in PROFILES:
            if self.profile in RESERVED_PROFILES:
                raise ValueError(f"manifest profile {self.profile!r} is reserved for a later format version")
            raise ValueError(f"manifest profile {self.profile!r} is not one of {sorted(PROFILES)}")
        if self.hash_name not in HASH_CODES:
            raise ValueError(f"manifest hash {self.hash_name!r} is not one of {sorted(HASH_CODES)}")
        code = HASH_CODES[self.hash_name]
        if not isinstance(self.root, CID) or self.root.version != 1:
            raise ValueError("manifest root must be a CIDv1")
        if self.root.codec not in (DAG_PB, RAW):
            raise ValueError(f"manifest root must be dag-pb or raw, not codec 0x{self.root.codec:x}")
        if self.root.hash.code != code:
            used = HASH_NAMES.get(self.root.hash.code, hex(self.root.hash.code))
            raise ValueError(f"manifest root is hashed with {used}, not {self.hash_name}")
        if type(self.size) is not int or not 0 <= self.size <= _U64_MAX:
            raise ValueError("manifest size must be a non-negative 64-bit integer")
        if type(self.entries) is not int or not 1 <= self.entries <= _U64_MAX:
            raise ValueError("manifest entries must be a positive 64-bit integer (the root counts)")
        self.chunker.validate()
        if (self.profile == PROFILE_CAR_IMPORT) != (self.chunker.name == IMPORTED_CHUNKER):
            raise ValueError(f"manifest profile {self.profile!r} does not go with chunker {self.chunker.name!r}")
        spec = _PROFILES[self.profile]
        if self.hash_name not in spec.hashes:
            raise ValueError(
                f"manifest profile {self.profile!r} allows hashes {list(spec.hashes)}, not {self.hash_name}"
            )
        if spec.chunker is not None and self.chunker != spec.chunker:
            raise ValueError(f"manifest profile {self.profile!r} needs the chunker {spec.chunker.to_cbor()}")
        if self.profile == PROFILE_DSTORE and self.chunker.name != CHUNKER_NAME:
            raise ValueError(f"manifest profile {self.profile!r} needs the {CHUNKER_NAME} chunker")
        if not isinstance(self.meta, dict):
            raise ValueError("manifest meta must be a map")  # noqa: TRY004 - callers catch ValueError
        for k, v in self.meta.items():
            if k not in META_KEYS:
                raise ValueError(f"manifest meta key {k!r} is not one of {sorted(META_KEYS)}")
            if type(v) is not str:
                raise ValueError(f"manifest meta {k!r} must be text")
            if len(v.encode("utf-8", "surrogatepass")) > MAX_META_VALUE_BYTES:
                raise ValueError(f"manifest meta {k!r} longer than {MAX_META_VALUE_BYTES} bytes")
        if self.parent is not None and (
            not isinstance(self.parent, CID) or self.parent.version != 1 or self.parent.codec != DAG_CBOR
        ):
            raise ValueError("manifest parent must be a dag-cbor CIDv1 (a dataset ID)")

    def to_cbor(self) -> dict[str, Any]:
        """The manifest as a DAG-CBOR data-model map (optional keys omitted when absent)."""
        m: dict[str, Any] = {
            "type": MANIFEST_TYPE,
            "version": MANIFEST_VERSION,
            "profile": self.profile,
            "root": self.root,
            "hash": self.hash_name,
            "chunker": self.chunker.to_cbor(),
            "size": self.size,
            "entries": self.entries,
        }
        if self.meta:
            m["meta"] = dict(self.meta)
        if self.parent is not None:
            m["parent"] = self.parent
        return m

    def encode(self) -> bytes:
        """Canonical DAG-CBOR block of the manifest (validates first)."""
        self.validate()
        return cbor.encode(self.to_cbor())

    @property
    def cid(self) -> CID:
        """The dataset ID: CIDv1 dag-cbor, hashed with the dataset's hash."""
        return cbor.block_cid(self.encode(), self.hash_name)

    @classmethod
    def decode(cls, block: bytes) -> Manifest:
        """Parse and validate an untrusted manifest block; FormatError on any fault."""
        if len(block) > MAX_MANIFEST_BYTES:
            raise FormatError(f"manifest of {len(block)} bytes exceeds {MAX_MANIFEST_BYTES}")
        obj = cbor.decode(block)
        if not isinstance(obj, dict):
            raise FormatError("manifest is not a map")
        if obj.get("type") != MANIFEST_TYPE:
            raise FormatError(f"not a dstore manifest (type {obj.get('type')!r})")
        version = obj.get("version")
        if version != MANIFEST_VERSION or type(version) is not int:
            hint = " (datasets of format version 1 are not readable; add them again)" if version == 1 else ""
            raise FormatError(f"unsupported manifest version {version!r}{hint}")
        allowed = {
            "type",
            "version",
            "profile",
            "root",
            "hash",
            "chunker",
            "size",
            "entries",
            "meta",
            "parent",
        }
        extra = set(obj) - allowed
        if extra:
            raise FormatError(f"unknown manifest keys {sorted(extra)}")
        for k in ("profile", "root", "hash", "chunker", "size", "entries"):
            if k not in obj:
                raise FormatError(f"manifest lacks {k!r}")
        ch = obj["chunker"]
        if not isinstance(ch, dict) or set(ch) != {"name", "min", "avg", "max"}:
            raise FormatError("manifest chunker must be a map of name, min, avg, max")
        meta = obj.get("meta", {})
        if "meta" in obj and (not isinstance(meta, dict) or not meta):
            raise FormatError("manifest meta must be a non-empty map when present")
        hash_name, profile = obj["hash"], obj["profile"]
        if type(hash_name) is not str:
            raise FormatError("manifest hash must be text")
        if type(profile) is not str:
            raise FormatError("manifest profile must be text")
        root, parent = obj["root"], obj.get("parent")
        if not isinstance(root, CID):
            raise FormatError("manifest root must be a CID")
        if "parent" in obj and not isinstance(parent, CID):
            raise FormatError("manifest parent must be a CID")
        try:
            m = cls(
                root=root,
                size=obj["size"],
                entries=obj["entries"],
                hash_name=hash_name,
                chunker=ChunkerParams(min=ch["min"], avg=ch["avg"], max=ch["max"], name=ch["name"]),
                meta=dict(meta),
                parent=parent,
                profile=profile,
            )
            m.validate()
        except ValueError as e:
            raise FormatError(f"bad manifest: {e}") from e
        return m
