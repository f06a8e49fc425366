//! The get's per-file parsing, a batch of blocks per call: the UnixFS File
//! nodes of a folder's files (a get of small files parses one per file; in
//! Python that was a third of its planning).
//!
//! `unixfs_file_nodes` reads only the shape dstore writes: canonical dag-pb
//! (`smallget::decode`) whose links are raw CIDv1 leaves of the dataset's hash
//! (`01 55 <code> 20 <32 bytes>`, canonical by construction) and whose Data is
//! a UnixFS File (Type 2, optional filesize, blocksizes plain or packed, no
//! inline data, no other field, no singular field twice) with one non-zero
//! blocksize per link adding up to filesize. Every such node is one that
//! `unixfs.parse_node` accepts, with the same meaning. Anything else is None:
//! the caller parses it in Python, which accepts it or says why not.

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyList};

use crate::smallget;

/// Blocks larger than this are refused by the Python decoder (dstore/limits.py MAX_BLOCK_BYTES).
const MAX_BLOCK_BYTES: usize = 2 << 20;
const T_FILE: u64 = 2;
const RAW_CID_BYTES: usize = 36;

/// A File node's filesize, and per link its raw CID bytes, Tsize and blocksize.
#[derive(Debug, PartialEq, Eq)]
pub struct FileNode<'a> {
    /// The file's bytes: its blocksizes' sum (which the filesize, when stored, equals).
    pub filesize: u64,
    /// Per link: the raw leaf's CID bytes, its Tsize if stored, its blocksize.
    pub links: Vec<(&'a [u8], Option<u64>, u64)>,
}

/// An unsigned varint as `dagpb.decode_varint` reads it (the same function as the dag-pb decoder's).
fn varint(buf: &[u8], pos: usize, end: usize) -> Option<(u64, usize)> {
    smallget::varint(buf, pos, end).ok()
}

/// filesize and blocksizes of a UnixFS Data message of a File without inline data; None otherwise.
fn file_data(data: &[u8]) -> Option<(Option<u64>, Vec<u64>)> {
    let end = data.len();
    let (mut pos, mut kind, mut filesize) = (0, None, None);
    let mut blocksizes = Vec::new();
    while pos < end {
        let (key, p) = varint(data, pos, end)?;
        pos = p;
        match (key >> 3, key & 7) {
            (1, 0) if kind.is_none() => {
                let (v, p) = varint(data, pos, end)?;
                kind = Some(v);
                pos = p;
            }
            (3, 0) if filesize.is_none() => {
                let (v, p) = varint(data, pos, end)?;
                filesize = Some(v);
                pos = p;
            }
            (4, 0) => {
                let (v, p) = varint(data, pos, end)?;
                blocksizes.push(v);
                pos = p;
            }
            (4, 2) => {
                let (n, p) = varint(data, pos, end)?;
                let stop = p
                    .checked_add(usize::try_from(n).ok()?)
                    .filter(|&s| s <= end)?;
                pos = p;
                while pos < stop {
                    let (v, p) = varint(data, pos, stop)?;
                    blocksizes.push(v);
                    pos = p;
                }
            }
            _ => return None,
        }
    }
    (kind == Some(T_FILE)).then_some((filesize, blocksizes))
}

/// The File node in `block` if it is of the shape described above, its leaves hashed with `hash_code`.
pub fn file_node(block: &[u8], hash_code: u8) -> Option<FileNode<'_>> {
    if block.len() > MAX_BLOCK_BYTES || hash_code >= 0x80 {
        return None;
    }
    let decoded = smallget::decode(block);
    if decoded.error.is_some() {
        return None;
    }
    let (filesize, blocksizes) = file_data(decoded.data?)?;
    if blocksizes.len() != decoded.links.len() {
        return None;
    }
    let prefix = [0x01, 0x55, hash_code, 0x20];
    let mut total: u64 = 0;
    let mut links = Vec::with_capacity(blocksizes.len());
    for (link, &size) in decoded.links.iter().zip(&blocksizes) {
        if link.hash.len() != RAW_CID_BYTES || link.hash[..4] != prefix || size == 0 {
            return None;
        }
        if link.name.is_some_and(|n| !n.is_empty()) {
            return None;
        }
        total = total.checked_add(size)?;
        links.push((link.hash, link.tsize, size));
    }
    if filesize.is_some_and(|f| f != total) {
        return None;
    }
    Some(FileNode {
        filesize: total,
        links,
    })
}

/// A parsed node, owned: filesize, and per link its CID bytes, Tsize, blocksize.
type Parsed = (u64, Vec<(Vec<u8>, u64, u64)>);

/// What `unixfs_file_nodes` gives back per block: filesize, link CIDs, Tsizes (0 when absent), blocksizes.
type FileTuple<'py> = (u64, Bound<'py, PyList>, Vec<u64>, Vec<u64>);

/// Per block, `(filesize, [link CID bytes], [tsize], [blocksize])` of a File node of the shape above
/// whose leaves are hashed with `hash_code`, else None (parse that block in Python).
#[pyfunction]
fn unixfs_file_nodes<'py>(
    py: Python<'py>,
    blocks: Vec<PyBackedBytes>,
    hash_code: u64,
) -> PyResult<Vec<Option<FileTuple<'py>>>> {
    let code = u8::try_from(hash_code).unwrap_or(0xff);
    // Parsed with the GIL released; only the (small) results are turned into Python objects.
    let parsed: Vec<Option<Parsed>> = py.detach(|| {
        blocks
            .iter()
            .map(|b| {
                file_node(b, code).map(|n| {
                    let links = n
                        .links
                        .iter()
                        .map(|&(h, t, s)| (h.to_vec(), t.unwrap_or(0), s))
                        .collect();
                    (n.filesize, links)
                })
            })
            .collect()
    });
    parsed
        .into_iter()
        .map(|item| {
            item.map(|(filesize, links)| -> PyResult<FileTuple<'py>> {
                let cids = PyList::empty(py);
                for (h, _, _) in &links {
                    cids.append(PyBytes::new(py, h))?;
                }
                let tsizes = links.iter().map(|l| l.1).collect();
                let sizes = links.iter().map(|l| l.2).collect();
                Ok((filesize, cids, tsizes, sizes))
            })
            .transpose()
        })
        .collect()
}

/// Adds this module's functions to the Python module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(unixfs_file_nodes, m)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_cid(code: u8, fill: u8) -> Vec<u8> {
        let mut c = vec![0x01, 0x55, code, 0x20];
        c.extend([fill; 32]);
        c
    }

    fn file(cids: &[Vec<u8>], data: &[u8]) -> Vec<u8> {
        let links: Vec<(&[u8], Option<&str>, Option<u64>)> =
            cids.iter().map(|c| (c.as_slice(), None, Some(7))).collect();
        smallget::encode(&links, Some(data))
    }

    #[test]
    fn reads_the_file_nodes_dstore_writes() {
        let cids = [raw_cid(0x1e, 1), raw_cid(0x1e, 2)];
        // Type File, filesize 300, blocksizes 100 and 200 (plain).
        let block = file(
            &cids,
            &[0x08, 0x02, 0x18, 0xac, 0x02, 0x20, 0x64, 0x20, 0xc8, 0x01],
        );
        let node = file_node(&block, 0x1e).unwrap();
        assert_eq!(node.filesize, 300);
        assert_eq!(
            node.links,
            vec![(&cids[0][..], Some(7), 100), (&cids[1][..], Some(7), 200)]
        );
        // Packed blocksizes, no filesize: the same file.
        let packed = file(&cids, &[0x08, 0x02, 0x22, 0x03, 0x64, 0xc8, 0x01]);
        assert_eq!(file_node(&packed, 0x1e).unwrap().filesize, 300);
    }

    #[test]
    fn leaves_everything_else_to_python() {
        let cids = [raw_cid(0x1e, 1)];
        let ok = [0x08, 0x02, 0x18, 0x64, 0x20, 0x64];
        assert!(file_node(&file(&cids, &ok), 0x1e).is_some());
        assert!(file_node(&file(&cids, &ok), 0x12).is_none()); // another hash than the dataset's
        assert!(file_node(&file(&[raw_cid(0x1e, 1)[..35].to_vec()], &ok), 0x1e).is_none());
        let mut pb = raw_cid(0x1e, 1);
        pb[1] = 0x70; // a dag-pb child: a deeper file DAG
        assert!(file_node(&file(&[pb], &ok), 0x1e).is_none());
        for data in [
            &[0x08, 0x01][..],                                       // a folder
            &[0x08, 0x02, 0x18, 0x65, 0x20, 0x64],                   // filesize != blocksizes
            &[0x08, 0x02, 0x18, 0x00, 0x20, 0x00],                   // a zero blocksize
            &[0x08, 0x02, 0x12, 0x01, 0x41, 0x18, 0x65, 0x20, 0x64], // inline data
            &[0x08, 0x02, 0x08, 0x02, 0x20, 0x64],                   // Type twice
            &[0x08, 0x02, 0x20, 0x64, 0x20, 0x64],                   // two blocksizes, one link
            &[0x08, 0x02, 0x20, 0x64, 0x30, 0x01],                   // fanout
            &[0x08, 0x02, 0x22, 0x05, 0x64],                         // packed past the end
            &[0x08, 0x82, 0x00, 0x20, 0x64],                         // a non-minimal varint
        ] {
            assert!(file_node(&file(&cids, data), 0x1e).is_none(), "{data:?}");
        }
        assert!(file_node(&smallget::encode(&[(&cids[0][..], None, None)], None), 0x1e).is_none());
        let block = file(&cids, &ok);
        assert!(file_node(&block[..block.len() - 1], 0x1e).is_none());
        let huge = vec![0u8; MAX_BLOCK_BYTES + 1];
        assert!(file_node(&huge, 0x1e).is_none());
    }
}
