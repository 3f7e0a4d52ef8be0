//! Deterministic layer generator.
//!
//! A [`LayerSpec`] fully determines its blob: same spec ⇒ byte-identical tar
//! ⇒ same diff_id and blob digest. Content comes from a self-contained PRNG
//! (wyrand) rather than `rand`, so digests stay stable across dependency
//! upgrades. Compression uses fast levels (gzip 1, zstd 1).

use std::io::{self, Read, Write};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use super::image::{OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD};

/// Fixed mtime for tar entries, for reproducibility.
const EPOCH: u64 = 1_700_000_000;
/// Content is generated in chunks that are either random or repeated text.
const CHUNK: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LayerSpec {
    /// Approximate uncompressed payload bytes (tar headers come on top).
    pub size: usize,
    /// Number of regular files; the payload is split evenly between them.
    pub files: usize,
    pub compression: Compression,
    pub seed: u64,
    /// 0.0 = incompressible random bytes .. 1.0 = highly repetitive text.
    pub compressibility: f32,
}

impl LayerSpec {
    /// A gzip layer with 0.5 compressibility.
    pub fn new(seed: u64, size: usize, files: usize) -> Self {
        Self {
            size,
            files,
            compression: Compression::Gzip,
            seed,
            compressibility: 0.5,
        }
    }

    pub fn compression(mut self, c: Compression) -> Self {
        self.compression = c;
        self
    }

    pub fn compressibility(mut self, c: f32) -> Self {
        self.compressibility = c;
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub digest: String,
    pub media_type: String,
    pub data: Bytes,
}

/// A generated layer blob plus what the config needs about it.
#[derive(Debug, Clone)]
pub struct BuiltLayer {
    pub blob: Blob,
    /// sha256 of the uncompressed tar.
    pub diff_id: String,
    pub uncompressed_size: u64,
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Builds one layer blob (single-threaded).
pub fn build_layer(spec: &LayerSpec) -> BuiltLayer {
    // Writing into memory cannot fail; errors here would be bugs.
    let (data, tee_hash, written) = match spec.compression {
        Compression::Gzip => {
            let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(1));
            let t = write_tar(spec, Tee::new(enc)).expect("in-memory tar");
            (
                t.inner.finish().expect("in-memory gzip"),
                t.hasher,
                t.written,
            )
        }
        Compression::Zstd => {
            let enc = zstd::stream::write::Encoder::new(Vec::new(), 1).expect("zstd level 1");
            let t = write_tar(spec, Tee::new(enc)).expect("in-memory tar");
            (
                t.inner.finish().expect("in-memory zstd"),
                t.hasher,
                t.written,
            )
        }
        Compression::None => {
            let t = write_tar(spec, Tee::new(Vec::new())).expect("in-memory tar");
            (t.inner, t.hasher, t.written)
        }
    };
    let diff_id = format!("sha256:{}", hex::encode(tee_hash.finalize()));
    let media_type = match spec.compression {
        Compression::Gzip => OCI_LAYER_GZIP,
        Compression::Zstd => OCI_LAYER_ZSTD,
        Compression::None => OCI_LAYER_TAR,
    };
    BuiltLayer {
        blob: Blob {
            digest: sha256_digest(&data),
            media_type: media_type.into(),
            data: Bytes::from(data),
        },
        diff_id,
        uncompressed_size: written,
    }
}

/// Writes the layer tar: one directory named from the seed holding `files` files.
fn write_tar<W: Write>(spec: &LayerSpec, w: W) -> io::Result<W> {
    let mut b = tar::Builder::new(w);
    let dir = format!("layer-{:016x}", spec.seed);
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    b.append_data(&mut h, format!("{dir}/"), io::empty())?;
    let files = spec.files.max(1);
    let per = spec.size / files;
    let mut gen = ContentGen::new(spec);
    for i in 0..files {
        let n = if i + 1 == files {
            spec.size - per * (files - 1)
        } else {
            per
        };
        let mut h = header(tar::EntryType::Regular, 0o644, n as u64);
        b.append_data(
            &mut h,
            format!("{dir}/f{i:05}.bin"),
            (&mut gen).take(n as u64),
        )?;
    }
    let mut w = b.into_inner()?;
    w.flush()?;
    Ok(w)
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(EPOCH);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Writer that hashes and counts the uncompressed bytes passing into `inner`.
struct Tee<W> {
    hasher: Sha256,
    inner: W,
    written: u64,
}

impl<W> Tee<W> {
    fn new(inner: W) -> Self {
        Self {
            hasher: Sha256::new(),
            inner,
            written: 0,
        }
    }
}

impl<W: Write> Write for Tee<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Deterministic content: 4 KiB chunks, each random or repeated text with
/// probability `compressibility`.
struct ContentGen {
    state: u64,
    threshold: u64,
    text: Vec<u8>,
    chunk: Vec<u8>,
    pos: usize,
}

impl ContentGen {
    fn new(spec: &LayerSpec) -> Self {
        let c = f64::from(spec.compressibility.clamp(0.0, 1.0));
        let phrase = format!(
            "prewarm testkit layer {:016x}: the quick brown fox jumps over the lazy dog\n",
            spec.seed
        );
        let text: Vec<u8> = phrase.bytes().cycle().take(CHUNK).collect();
        Self {
            state: spec.seed ^ 0x9e37_79b9_7f4a_7c15,
            threshold: (c * u64::MAX as f64) as u64,
            text,
            chunk: vec![0; CHUNK],
            pos: CHUNK,
        }
    }

    fn refill(&mut self) {
        if wyrand(&mut self.state) < self.threshold {
            self.chunk.copy_from_slice(&self.text);
        } else {
            for c in self.chunk.chunks_exact_mut(8) {
                c.copy_from_slice(&wyrand(&mut self.state).to_le_bytes());
            }
        }
        self.pos = 0;
    }
}

fn wyrand(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0xa076_1d64_78bd_642f);
    let t = u128::from(*state) * u128::from(*state ^ 0xe703_7ed1_a0b4_28db);
    ((t >> 64) ^ t) as u64
}

impl Read for ContentGen {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == CHUNK {
            self.refill();
        }
        let n = buf.len().min(CHUNK - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;

    fn untar(data: &[u8], c: Compression) -> Vec<(String, u64)> {
        let r: Box<dyn Read> = match c {
            Compression::Gzip => Box::new(GzDecoder::new(data)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(data).unwrap()),
            Compression::None => Box::new(data),
        };
        let mut a = tar::Archive::new(r);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path().unwrap().display().to_string(), e.size())
            })
            .collect()
    }

    #[test]
    fn layer_is_deterministic_and_diff_id_matches() {
        for c in [Compression::Gzip, Compression::Zstd, Compression::None] {
            let spec = LayerSpec::new(7, 100_000, 3).compression(c);
            let a = build_layer(&spec);
            let b = build_layer(&spec);
            assert_eq!(a.blob.data, b.blob.data);
            assert_eq!(a.blob.digest, sha256_digest(&a.blob.data));
            let entries = untar(&a.blob.data, c);
            assert_eq!(entries.len(), 4, "dir + 3 files");
            assert_eq!(entries[0].0, format!("layer-{:016x}/", 7));
            assert_eq!(entries.iter().map(|e| e.1).sum::<u64>(), 100_000);
            // diff_id = sha256 of the uncompressed tar
            let mut raw = Vec::new();
            match c {
                Compression::Gzip => {
                    GzDecoder::new(&a.blob.data[..])
                        .read_to_end(&mut raw)
                        .unwrap();
                }
                Compression::Zstd => raw = zstd::decode_all(&a.blob.data[..]).unwrap(),
                Compression::None => raw = a.blob.data.to_vec(),
            }
            assert_eq!(a.diff_id, sha256_digest(&raw));
            assert_eq!(a.uncompressed_size, raw.len() as u64);
        }
        assert_ne!(
            build_layer(&LayerSpec::new(1, 1000, 1)).blob.digest,
            build_layer(&LayerSpec::new(2, 1000, 1)).blob.digest
        );
    }

    #[test]
    fn compressibility_controls_ratio() {
        let size = 1 << 20;
        let low = build_layer(&LayerSpec::new(3, size, 1).compressibility(0.0));
        let high = build_layer(&LayerSpec::new(3, size, 1).compressibility(1.0));
        assert!(
            low.blob.data.len() > size * 95 / 100,
            "{}",
            low.blob.data.len()
        );
        assert!(high.blob.data.len() < size / 50, "{}", high.blob.data.len());
        let mid = build_layer(&LayerSpec::new(3, size, 1));
        let r = mid.blob.data.len() as f64 / size as f64;
        assert!((0.35..0.65).contains(&r), "{r}");
    }

    #[test]
    fn empty_and_tiny_specs_do_not_panic() {
        let l = build_layer(&LayerSpec::new(0, 0, 0));
        assert_eq!(untar(&l.blob.data, Compression::Gzip).len(), 2);
        let l = build_layer(&LayerSpec::new(0, 3, 10).compressibility(f32::NAN));
        assert_eq!(untar(&l.blob.data, Compression::Gzip).len(), 11);
    }
}
