//! The chunk and shard hashes a dataset can use, by multihash code.
//!
//! Every CID of a dataset uses the dataset's hash (docs/format.md): BLAKE3 by
//! default, SHA-256 for the `unixfs-v1-2025` profile and `--hash sha2-256`.

use sha2::Digest;

/// Multihash code of BLAKE3-256.
pub const HASH_BLAKE3: u64 = 0x1e;
/// Multihash code of SHA2-256.
pub const HASH_SHA2_256: u64 = 0x12;
/// Bytes of every digest (both hashes give 32).
pub const DIGEST_BYTES: usize = 32;

/// A supported hash (one variant per multihash code).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChunkHash {
    /// BLAKE3 with a 32-byte digest.
    #[default]
    Blake3,
    /// SHA2-256 (SHA-NI instructions where the CPU has them).
    Sha256,
}

/// An unsupported multihash code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownHash(pub u64);

impl std::fmt::Display for UnknownHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unsupported hash 0x{:x} (supported: 0x1e blake3, 0x12 sha2-256)",
            self.0
        )
    }
}

impl std::error::Error for UnknownHash {}

impl ChunkHash {
    /// The hash of multihash `code`, if supported.
    pub fn from_code(code: u64) -> Result<Self, UnknownHash> {
        match code {
            HASH_BLAKE3 => Ok(Self::Blake3),
            HASH_SHA2_256 => Ok(Self::Sha256),
            _ => Err(UnknownHash(code)),
        }
    }

    /// Bytes of one digest.
    pub fn digest_len(self) -> usize {
        DIGEST_BYTES
    }

    /// The digest of `data`.
    #[inline]
    pub fn digest(self, data: &[u8]) -> [u8; DIGEST_BYTES] {
        match self {
            Self::Blake3 => *blake3::hash(data).as_bytes(),
            Self::Sha256 => sha2::Sha256::digest(data).into(),
        }
    }

    /// Whether `data` hashes to `digest`.
    #[inline]
    pub fn matches(self, data: &[u8], digest: &[u8]) -> bool {
        self.digest(data).as_slice() == digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(d: &[u8]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn known_answers() {
        // FIPS 180-2 "abc", and the empty string (the empty raw block's digest).
        assert_eq!(
            hex(&ChunkHash::Sha256.digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(&ChunkHash::Sha256.digest(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            ChunkHash::Blake3.digest(b"abc"),
            *blake3::hash(b"abc").as_bytes()
        );
        assert!(ChunkHash::Sha256.matches(b"abc", &ChunkHash::Sha256.digest(b"abc")));
        assert!(!ChunkHash::Blake3.matches(b"abc", &ChunkHash::Sha256.digest(b"abc")));
    }

    #[test]
    fn codes() {
        assert_eq!(ChunkHash::from_code(0x1e), Ok(ChunkHash::Blake3));
        assert_eq!(ChunkHash::from_code(0x12), Ok(ChunkHash::Sha256));
        assert_eq!(ChunkHash::from_code(0x13), Err(UnknownHash(0x13)));
    }
}
