//! The shared JSON vectors in `tests/vectors/` (also read by pytest).

use dstore_native::{chunk, erasure};
use serde_json::Value;

/// GEAR_DIGEST pinned here too, so a changed table fails even if the vectors are regenerated.
const GEAR_DIGEST: &str = "360f63ec25e3157d66488d1ffd1d5c538c12a7892f0b47469fcdd0f7b2d4accd";

fn load(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/vectors")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("valid JSON")
}

fn input(seed: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    if seed != "zeros" {
        blake3::Hasher::new()
            .update(seed.as_bytes())
            .finalize_xof()
            .fill(&mut out);
    }
    out
}

fn num(v: &Value, key: &str) -> usize {
    v[key].as_u64().unwrap_or_else(|| panic!("{key}")) as usize
}

fn boundaries_digest(lengths: &[usize]) -> String {
    let mut h = blake3::Hasher::new();
    let mut end = 0u64;
    for &n in lengths {
        end += n as u64;
        h.update(&end.to_le_bytes());
    }
    h.finalize().to_hex().to_string()
}

#[test]
fn gear_digest_is_pinned() {
    assert_eq!(chunk::gear_digest(), GEAR_DIGEST);
    assert_eq!(load("chunker.json")["gear_digest"], GEAR_DIGEST);
}

#[test]
fn chunker_vectors() {
    let v = load("chunker.json");
    let cases = v["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for c in cases {
        let seed = c["seed"].as_str().unwrap();
        let data = input(seed, num(c, "length"));
        let p = chunk::Params::new(num(c, "min"), num(c, "avg"), num(c, "max")).unwrap();
        let want: Vec<usize> = c["lengths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(chunk::chunk_lengths(&data, true, &p), want, "{seed}");
    }
    let s = &v["stream"];
    let data = input(s["seed"].as_str().unwrap(), num(s, "length"));
    let p = chunk::Params::new(num(s, "min"), num(s, "avg"), num(s, "max")).unwrap();
    let lengths = chunk::chunk_lengths(&data, true, &p);
    assert_eq!(lengths.len(), num(s, "chunks"));
    assert_eq!(
        boundaries_digest(&lengths),
        s["boundaries_digest"].as_str().unwrap()
    );
    // The pipeline cuts the same boundaries.
    let seg = dstore_native::pipeline::process_segment(
        &data,
        true,
        &p.into(),
        3,
        dstore_native::hash::ChunkHash::Blake3,
    );
    assert_eq!(seg.lengths, lengths);
}

#[test]
fn erasure_vectors() {
    let v = load("erasure.json");
    for c in v["cases"].as_array().unwrap() {
        let (k, m, shard) = (num(c, "k"), num(c, "m"), num(c, "shard_size"));
        let data = input(c["seed"].as_str().unwrap(), k * shard);
        let parity = erasure::encode(&data, k, m).unwrap();
        assert_eq!(
            blake3::hash(&parity).to_hex().as_str(),
            c["parity_blake3"].as_str().unwrap(),
            "{k}+{m}"
        );
        let digests = erasure::shard_digests(
            &data,
            &parity,
            shard,
            dstore_native::hash::ChunkHash::Blake3,
        );
        assert_eq!(
            blake3::hash(&digests).to_hex().as_str(),
            c["shard_digests_blake3"].as_str().unwrap()
        );
    }
}
