//! Strict dag-pb decoding in one call per block (the get of a tree of small
//! files parses a UnixFS node per file: byte-at-a-time varints in Python were
//! most of that work).
//!
//! Accepts exactly what `dstore/format/dagpb.py` accepts, with its messages:
//! canonical field order (Links before Data, a link's Hash, Name, Tsize in
//! that order, each at most once), Hash present, minimal varints of at most
//! 64 bits, UTF-8 names, no unknown fields. Link hashes are not parsed as
//! CIDs here: the caller checks them, in order, as the Python decoder does.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};

/// One decoded link: its hash bytes, name and Tsize as stored (None when absent).
#[derive(Debug, PartialEq, Eq)]
pub struct Link<'a> {
    /// The link's Hash (a binary CID, unchecked).
    pub hash: &'a [u8],
    /// The link's Name, if stored.
    pub name: Option<&'a str>,
    /// The link's Tsize, if stored.
    pub tsize: Option<u64>,
}

/// A decoded node, or as much of it as was read before the first fault.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// Links in their stored order (those before the fault, on error).
    pub links: Vec<Link<'a>>,
    /// Data, if stored.
    pub data: Option<&'a [u8]>,
    /// Why the block is not canonical dag-pb (the Python decoder's message).
    pub error: Option<String>,
}

/// A minimal unsigned varint at `pos` (before `end`): `(value, new position)`.
pub(crate) fn varint(buf: &[u8], mut pos: usize, end: usize) -> Result<(u64, usize), String> {
    let start = pos;
    let mut result: u128 = 0;
    let mut shift = 0u32;
    loop {
        if pos >= end {
            return Err("truncated varint".into());
        }
        let b = buf[pos];
        pos += 1;
        result |= u128::from(b & 0x7f) << shift;
        if b < 0x80 {
            if b == 0 && pos - start > 1 {
                return Err("non-minimal varint".into());
            }
            return u64::try_from(result)
                .map(|v| (v, pos))
                .map_err(|_| "varint exceeds 64 bits".into());
        }
        shift += 7;
        if shift >= 70 {
            return Err("varint longer than 10 bytes".into());
        }
    }
}

/// A length-delimited field's bytes at `pos`: `(bytes, new position)`.
fn delimited<'a>(
    buf: &'a [u8],
    pos: usize,
    end: usize,
    what: &str,
) -> Result<(&'a [u8], usize), String> {
    let (n, pos) = varint(buf, pos, end)?;
    if n > (end - pos) as u64 {
        return Err(format!("truncated dag-pb {what}"));
    }
    let n = n as usize;
    Ok((&buf[pos..pos + n], pos + n))
}

fn link(buf: &[u8], mut pos: usize, end: usize) -> Result<Link<'_>, String> {
    let (mut hash, mut name, mut tsize) = (None, None, None);
    let mut last = 0u64;
    while pos < end {
        let (key, p) = varint(buf, pos, end)?;
        pos = p;
        let (field, wire) = (key >> 3, key & 7);
        if field <= last {
            return Err("dag-pb link fields out of order or repeated".into());
        }
        last = field;
        match (field, wire) {
            (1, 2) => {
                let (bytes, p) = delimited(buf, pos, end, "link hash")?;
                hash = Some(bytes);
                pos = p;
            }
            (2, 2) => {
                let (bytes, p) = delimited(buf, pos, end, "link name")?;
                name = Some(
                    std::str::from_utf8(bytes)
                        .map_err(|_| "dag-pb link name is not UTF-8".to_string())?,
                );
                pos = p;
            }
            (3, 0) => {
                let (v, p) = varint(buf, pos, end)?;
                tsize = Some(v);
                pos = p;
            }
            _ => {
                return Err(format!(
                    "unexpected field {field} (wire type {wire}) in dag-pb link"
                ));
            }
        }
    }
    let hash = hash.ok_or_else(|| "dag-pb link without Hash".to_string())?;
    Ok(Link { hash, name, tsize })
}

/// Decodes `buf` strictly (see the module's comment); stops at the first fault.
pub fn decode(buf: &[u8]) -> Decoded<'_> {
    let mut out = Decoded::default();
    let end = buf.len();
    let mut pos = 0;
    while pos < end {
        let step = (|| {
            let (key, p) = varint(buf, pos, end)?;
            match key {
                0x12 => {
                    if out.data.is_some() {
                        return Err("dag-pb Links after Data".to_string());
                    }
                    let (body, p) = delimited(buf, p, end, "link")?;
                    let start = p - body.len();
                    out.links.push(link(buf, start, p)?);
                    Ok(p)
                }
                0x0a => {
                    if out.data.is_some() {
                        return Err("dag-pb Data repeated".to_string());
                    }
                    let (data, p) = delimited(buf, p, end, "Data")?;
                    out.data = Some(data);
                    Ok(p)
                }
                _ => Err(format!(
                    "unexpected field {} (wire type {}) in dag-pb node",
                    key >> 3,
                    key & 7
                )),
            }
        })();
        match step {
            Ok(p) => pos = p,
            Err(e) => {
                out.error = Some(e);
                break;
            }
        }
    }
    out
}

/// `(links, data, error)` of a dag-pb block: links as `(hash, name, tsize)`,
/// absent fields as None; `error` is None for a canonical block, else the
/// reason, `links` then holding those read before it.
/// What `dagpb_decode` returns to Python: links, data, error.
type Decoded3<'py> = (
    Bound<'py, PyList>,
    Option<Bound<'py, PyBytes>>,
    Option<String>,
);

#[pyfunction]
fn dagpb_decode<'py>(py: Python<'py>, block: &[u8]) -> PyResult<Decoded3<'py>> {
    let decoded = decode(block);
    let links = PyList::empty(py);
    for l in &decoded.links {
        let name = l.name.map(|n| PyString::new(py, n));
        links.append((PyBytes::new(py, l.hash), name, l.tsize))?;
    }
    let data = decoded.data.map(|d| PyBytes::new(py, d));
    Ok((links, data, decoded.error))
}

/// Most entries a locator chunk page may list (docs/format.md, "Locator").
pub const CHUNKS_PER_PAGE: usize = 4096;
const DIGEST_BYTES: usize = 32;
const ENTRY_PREFIX: [u8; 3] = [0x86, 0x58, 0x20]; // array(6), bytes(32)

/// A minimal CBOR head of major type `major` at `pos`: `(argument, new position)`.
fn cbor_head(buf: &[u8], pos: usize, major: u8) -> Option<(u64, usize)> {
    let first = *buf.get(pos)?;
    if first >> 5 != major {
        return None;
    }
    let info = first & 0x1f;
    let (value, next) = match info {
        0..=23 => return Some((u64::from(info), pos + 1)),
        24 => (u64::from(*buf.get(pos + 1)?), pos + 2),
        25 => (
            u64::from(u16::from_be_bytes(
                buf.get(pos + 1..pos + 3)?.try_into().ok()?,
            )),
            pos + 3,
        ),
        26 => (
            u64::from(u32::from_be_bytes(
                buf.get(pos + 1..pos + 5)?.try_into().ok()?,
            )),
            pos + 5,
        ),
        27 => (
            u64::from_be_bytes(buf.get(pos + 1..pos + 9)?.try_into().ok()?),
            pos + 9,
        ),
        _ => return None,
    };
    // Minimal: the shortest head that holds the value.
    let minimal = match info {
        24 => value >= 24,
        25 => value > 0xff,
        26 => value > 0xffff,
        _ => value > 0xffff_ffff,
    };
    minimal.then_some((value, next))
}

/// A locator chunk page as the reader keeps it: digests end to end, each
/// digest's first 8 bytes as a big-endian integer, and the five numbers of
/// each entry (pack index, offset, stored length, size, codec), native-endian u64s.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ChunkPage {
    /// Entries on the page.
    pub count: usize,
    /// 32-byte digests, concatenated.
    pub digests: Vec<u8>,
    /// First 8 bytes of each digest, big-endian, as native-endian u64 bytes.
    pub prefixes: Vec<u8>,
    /// Five u64 per entry, native-endian bytes.
    pub numbers: Vec<u8>,
}

/// Parses a chunk page in exactly the canonical form the writer produces
/// (an array of 1..=CHUNKS_PER_PAGE entries `[digest, pack, offset,
/// stored_len, size, codec]`, minimal heads, codec 0 or 1, a raw chunk's
/// stored length equal to its size, digests strictly ascending); None for
/// anything else (the caller's Python decoder then says why).
pub fn chunk_page(block: &[u8]) -> Option<ChunkPage> {
    let (n, mut pos) = cbor_head(block, 0, 4)?;
    let n = usize::try_from(n).ok()?;
    if !(1..=CHUNKS_PER_PAGE).contains(&n) {
        return None;
    }
    let mut page = ChunkPage {
        count: n,
        digests: Vec::with_capacity(n * DIGEST_BYTES),
        prefixes: Vec::with_capacity(n * 8),
        numbers: Vec::with_capacity(n * 40),
    };
    let mut last: Option<&[u8]> = None;
    for _ in 0..n {
        if block.get(pos..pos + 3)? != ENTRY_PREFIX {
            return None;
        }
        let digest = block.get(pos + 3..pos + 3 + DIGEST_BYTES)?;
        pos += 3 + DIGEST_BYTES;
        if last.is_some_and(|l| l >= digest) {
            return None;
        }
        last = Some(digest);
        let mut fields = [0u64; 5];
        for f in &mut fields {
            let (v, p) = cbor_head(block, pos, 0)?;
            *f = v;
            pos = p;
        }
        let [_, _, stored_len, size, codec] = fields;
        if codec > 1 || (codec == 0 && stored_len != size) {
            return None;
        }
        page.digests.extend_from_slice(digest);
        page.prefixes
            .extend_from_slice(&u64::from_be_bytes(digest[..8].try_into().ok()?).to_ne_bytes());
        for f in fields {
            page.numbers.extend_from_slice(&f.to_ne_bytes());
        }
    }
    (pos == block.len()).then_some(page)
}

/// What `locator_chunk_page` returns to Python: count, digests, prefixes, numbers.
type PageBytes<'py> = (
    usize,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
);

/// `(count, digests, prefixes, numbers)` of a canonical locator chunk page
/// (see `chunk_page`), or None when the block is not one.
#[pyfunction]
fn locator_chunk_page<'py>(py: Python<'py>, block: &[u8]) -> Option<PageBytes<'py>> {
    let page = chunk_page(block)?;
    Some((
        page.count,
        PyBytes::new(py, &page.digests),
        PyBytes::new(py, &page.prefixes),
        PyBytes::new(py, &page.numbers),
    ))
}

/// Chunk-table pages end where the content says (docs/format.md, "Locator").
const CHUNK_PAGE_TARGET: u32 = 1024;
/// Bytes of one chunk-table record as `dstore/ingest/spool.py` writes them:
/// digest, pack number (u32), offset, stored length, size (u64), codec (u8), big-endian.
pub const RECORD_BYTES: usize = 32 + 4 + 8 + 8 + 8 + 1;

fn push_uint(out: &mut Vec<u8>, major: u8, v: u64) {
    let m = major << 5;
    if v < 24 {
        out.push(m | v as u8);
    } else if v <= 0xff {
        out.extend_from_slice(&[m | 24, v as u8]);
    } else if v <= 0xffff {
        out.push(m | 25);
        out.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v <= 0xffff_ffff {
        out.push(m | 26);
        out.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// Whether an entry with this digest ends its page (content-defined paging).
pub fn ends_page(digest: &[u8]) -> bool {
    let head = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    head % CHUNK_PAGE_TARGET == CHUNK_PAGE_TARGET - 1
}

/// The canonical DAG-CBOR of one chunk page of `entries` `(digest, pack, offset, stored, size, codec)`.
pub fn encode_page(entries: &[([u8; 32], [u64; 5])]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + entries.len() * 60);
    push_uint(&mut out, 4, entries.len() as u64);
    for (digest, numbers) in entries {
        out.extend_from_slice(&ENTRY_PREFIX);
        out.extend_from_slice(digest);
        for &n in numbers {
            push_uint(&mut out, 0, n);
        }
    }
    out
}

/// Chunk pages from digest-sorted chunk-table `records` (RECORD_BYTES each);
/// `pack_index[n]` is the locator's index of this add's pack number n and
/// `pack_sizes[i]` the size of locator pack i. Returns the pages closed and how
/// many records they hold; unless `last`, the records after the last closed page are
/// left for the next call (pages are cut by content, so where calls split the
/// records changes nothing). `after` is the digest of the record before the first.
pub fn chunk_pages(
    records: &[u8],
    pack_index: &[u64],
    pack_sizes: &[u64],
    after: Option<&[u8]>,
    last: bool,
) -> Result<(Vec<Vec<u8>>, usize), String> {
    if records.len() % RECORD_BYTES != 0 {
        return Err(format!("chunk records must be {RECORD_BYTES} bytes each"));
    }
    let mut pages = Vec::new();
    let mut page: Vec<([u8; 32], [u64; 5])> = Vec::new();
    let mut done = 0;
    let mut previous = after.map(<[u8]>::to_vec);
    for (i, r) in records.chunks_exact(RECORD_BYTES).enumerate() {
        let digest: [u8; 32] = r[..32].try_into().expect("32 bytes");
        let be = |at: usize| u64::from_be_bytes(r[at..at + 8].try_into().expect("8 bytes"));
        let number = u32::from_be_bytes(r[32..36].try_into().expect("4 bytes")) as usize;
        let (offset, stored, size, codec) = (be(36), be(44), be(52), u64::from(r[60]));
        if previous.as_deref().is_some_and(|p| p >= &digest[..]) {
            return Err("locator chunks must be sorted by digest, one entry per digest".into());
        }
        previous = Some(digest.to_vec());
        let pack = *pack_index
            .get(number)
            .ok_or_else(|| format!("chunk pack number {number} out of range"))?;
        let pack_size = *usize::try_from(pack)
            .ok()
            .and_then(|p| pack_sizes.get(p))
            .ok_or_else(|| {
                format!(
                    "chunk pack index {pack} out of range ({} packs)",
                    pack_sizes.len()
                )
            })?;
        if codec > 1 {
            return Err(format!(
                "chunk codec must be 0 (raw) or 1 (zstd), got {codec}"
            ));
        }
        if codec == 0 && stored != size {
            return Err("a raw-stored chunk has stored length == size".into());
        }
        if offset.checked_add(stored).is_none_or(|end| end > pack_size) {
            return Err(format!(
                "chunk {} ends past its pack ({offset} + {stored} > {pack_size})",
                digest
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            ));
        }
        page.push((digest, [pack, offset, stored, size, codec]));
        if ends_page(&digest) || page.len() == CHUNKS_PER_PAGE {
            pages.push(encode_page(&page));
            page.clear();
            done = i + 1;
        }
    }
    if last && !page.is_empty() {
        pages.push(encode_page(&page));
        done = records.len() / RECORD_BYTES;
    }
    Ok((pages, done))
}

/// `(pages, records consumed)`: see `chunk_pages`; ValueError for records that do not make a locator.
#[pyfunction]
#[pyo3(signature = (records, pack_index, pack_sizes, after, last))]
fn locator_pages<'py>(
    py: Python<'py>,
    records: &[u8],
    pack_index: Vec<u64>,
    pack_sizes: Vec<u64>,
    after: Option<&[u8]>,
    last: bool,
) -> PyResult<(Bound<'py, PyList>, usize)> {
    let (pages, done) = chunk_pages(records, &pack_index, &pack_sizes, after, last)
        .map_err(pyo3::exceptions::PyValueError::new_err)?;
    let list = PyList::empty(py);
    for page in pages {
        list.append(PyBytes::new(py, &page))?;
    }
    Ok((list, done))
}

fn push_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn push_bytes_field(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    push_varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

/// Canonical dag-pb bytes of a node: each link (Hash, Name, Tsize) as field 2, then Data as field 1.
pub fn encode(links: &[(&[u8], Option<&str>, Option<u64>)], data: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(links.len() * 48 + data.map_or(0, |d| d.len() + 8));
    let mut body = Vec::with_capacity(64);
    for &(hash, name, tsize) in links {
        body.clear();
        push_bytes_field(&mut body, 0x0a, hash);
        if let Some(name) = name {
            push_bytes_field(&mut body, 0x12, name.as_bytes());
        }
        if let Some(t) = tsize {
            body.push(0x18);
            push_varint(&mut body, t);
        }
        push_bytes_field(&mut out, 0x12, &body);
    }
    if let Some(d) = data {
        push_bytes_field(&mut out, 0x0a, d);
    }
    out
}

/// Canonical dag-pb bytes of `links` (`(hash bytes, name or None, tsize or None)`) and `data`.
#[pyfunction]
#[pyo3(signature = (links, data))]
fn dagpb_encode<'py>(
    py: Python<'py>,
    links: Vec<(Bound<'py, PyBytes>, Option<String>, Option<u64>)>,
    data: Option<&[u8]>,
) -> Bound<'py, PyBytes> {
    let borrowed: Vec<(&[u8], Option<&str>, Option<u64>)> = links
        .iter()
        .map(|(h, n, t)| (h.as_bytes(), n.as_deref(), *t))
        .collect();
    PyBytes::new(py, &encode(&borrowed, data))
}

/// Adds this module's functions to `dstore._native`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(dagpb_decode, m)?)?;
    m.add_function(wrap_pyfunction!(locator_chunk_page, m)?)?;
    m.add_function(wrap_pyfunction!(locator_pages, m)?)?;
    m.add_function(wrap_pyfunction!(dagpb_encode, m)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_links_then_data() {
        // Link{Hash=[1,2], Name="a", Tsize=5}, Data=[9]
        let block = [
            0x12, 0x09, 0x0a, 0x02, 1, 2, 0x12, 0x01, b'a', 0x18, 0x05, 0x0a, 0x01, 9,
        ];
        let d = decode(&block);
        assert_eq!(d.error, None);
        assert_eq!(
            d.links,
            vec![Link {
                hash: &[1, 2],
                name: Some("a"),
                tsize: Some(5)
            }]
        );
        assert_eq!(d.data, Some(&[9u8][..]));
    }

    #[test]
    fn refuses_what_is_not_canonical() {
        let cases: &[(&[u8], &str)] = &[
            (
                &[0x0a, 0x00, 0x12, 0x02, 0x0a, 0x00],
                "dag-pb Links after Data",
            ),
            (&[0x0a, 0x00, 0x0a, 0x00], "dag-pb Data repeated"),
            (&[0x0a, 0x05, 1], "truncated dag-pb Data"),
            (&[0x12, 0x00], "dag-pb link without Hash"),
            (&[0x12, 0x02, 0x18, 0x01], "dag-pb link without Hash"),
            (
                &[0x12, 0x04, 0x18, 0x01, 0x0a, 0x00],
                "dag-pb link fields out of order or repeated",
            ),
            (&[0x0a, 0x80, 0x00], "non-minimal varint"),
            (&[0x0a], "truncated varint"),
            (
                &[0x1a, 0x00],
                "unexpected field 3 (wire type 2) in dag-pb node",
            ),
            (
                &[0x12, 0x04, 0x0a, 0x00, 0x12, 0x01],
                "truncated dag-pb link name",
            ),
            (
                &[0x12, 0x05, 0x0a, 0x00, 0x12, 0x01, 0xff],
                "dag-pb link name is not UTF-8",
            ),
            (
                &[0x12, 0x02, 0x20, 0x00],
                "unexpected field 4 (wire type 0) in dag-pb link",
            ),
        ];
        for (block, message) in cases {
            assert_eq!(decode(block).error.as_deref(), Some(*message), "{block:?}");
        }
        let long = [
            0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ];
        assert_eq!(
            decode(&long).error.as_deref(),
            Some("varint exceeds 64 bits")
        );
        let longer = [
            0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        assert_eq!(
            decode(&longer).error.as_deref(),
            Some("varint longer than 10 bytes")
        );
    }
}
