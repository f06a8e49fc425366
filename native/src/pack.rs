//! Where decoders read stored chunk bytes from: one buffer, or a pack given
//! as its data shards end to end (mapped from their files, never copied into
//! one buffer).

use std::borrow::Cow;

/// A pack given as equal-length parts end to end.
pub struct PackParts<'a> {
    parts: Vec<&'a [u8]>,
    part_len: usize,
}

impl<'a> PackParts<'a> {
    /// The pack made of `parts`; `None` if they differ in length.
    pub fn new(parts: Vec<&'a [u8]>) -> Option<Self> {
        let part_len = parts.first().map_or(0, |p| p.len());
        parts
            .iter()
            .all(|p| p.len() == part_len)
            .then_some(Self { parts, part_len })
    }
}

/// Bytes of a pack, read by range.
pub trait PackSource: Sync {
    /// Length of the pack in bytes.
    fn len(&self) -> usize;

    /// True when the pack holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes `[start, end)` of the pack (`start <= end <= len()`): borrowed
    /// when contiguous, else gathered.
    fn range(&self, start: usize, end: usize) -> Cow<'_, [u8]>;
}

impl PackSource for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn range(&self, start: usize, end: usize) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self[start..end])
    }
}

impl PackSource for PackParts<'_> {
    fn len(&self) -> usize {
        self.parts.len() * self.part_len
    }

    fn range(&self, start: usize, end: usize) -> Cow<'_, [u8]> {
        if start == end {
            // Also keeps an empty range of a pack without parts from dividing by zero.
            return Cow::Borrowed(&[]);
        }
        let first = start / self.part_len;
        let within = start % self.part_len;
        if within + (end - start) <= self.part_len {
            return Cow::Borrowed(&self.parts[first][within..within + (end - start)]);
        }
        // A chunk that straddles parts (about one in sixteen with 1 MiB shards).
        let mut gathered = Vec::with_capacity(end - start);
        let mut pos = start;
        while pos < end {
            let (part, at) = (pos / self.part_len, pos % self.part_len);
            let take = (self.part_len - at).min(end - pos);
            gathered.extend_from_slice(&self.parts[part][at..at + take]);
            pos += take;
        }
        Cow::Owned(gathered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::random;

    #[test]
    fn ranges_match_the_joined_pack_across_parts() {
        let data = random(4 * 1000, 1);
        let pack = PackParts::new(data.chunks(1000).collect()).unwrap();
        assert_eq!(PackSource::len(&pack), 4000);
        for (start, end) in [
            (0, 0),
            (0, 1000),
            (999, 1001),
            (10, 3990),
            (3999, 4000),
            (4000, 4000),
        ] {
            assert_eq!(
                &*pack.range(start, end),
                &data[start..end],
                "{start}..{end}"
            );
        }
    }

    #[test]
    fn parts_of_unequal_length_are_refused_and_no_parts_is_empty() {
        assert!(PackParts::new(vec![&[1u8, 2][..], &[3u8][..]]).is_none());
        let empty = PackParts::new(Vec::new()).unwrap();
        assert!(empty.is_empty());
        assert!(empty.range(0, 0).is_empty());
    }
}
