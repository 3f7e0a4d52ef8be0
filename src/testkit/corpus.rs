//! Ready-made image sets. All are deterministic in their seed.
//!
//! [`corpus_shapes`] (repo `shapes/*`, tag `v1`), ≈ 106 MiB uncompressed by default:
//! - `shapes/shared-a`, `shapes/shared-b`: share an 8 MiB base layer (50 files),
//!   each adds a unique 4 MiB layer.
//! - `shapes/large`: one large gzip layer (64 MiB by default, 4 files,
//!   compressibility 0.3); size set by [`corpus_shapes_with`].
//! - `shapes/many-small`: 30 layers of 64–320 KiB; layer 0 is an uncompressed tar.
//! - `shapes/docker`: Docker v2 schema 2 image, 2 gzip layers (6 MiB).
//! - `shapes/zstd`: OCI image with 2 zstd layers (6 MiB).
//! - `shapes/multiarch`: OCI index, linux/amd64 + linux/arm64, 2 layers each (4 MiB).
//!
//! [`bench_corpus`]: `bench/img-NN:v1`, a shared base layer plus 3 unique layers each.
//! [`demo_corpus`]: `demo/{web,api,worker,batch}:1.0`, ≈ 38 MB distinct.

use super::image::{
    Blob, BuiltImage, BuiltIndex, Compression, Format, ImageSpec, LayerCache, LayerSpec,
};
use bytes::Bytes;

const MIB: usize = 1 << 20;

/// An image or an index (multi-arch) ready to push.
#[derive(Debug, Clone)]
pub enum Built {
    Image(BuiltImage),
    Index(BuiltIndex),
}

/// `(repo, tag, built)`.
pub type CorpusEntry = (String, String, Built);

impl Built {
    /// Digest of the top-level manifest or index.
    pub fn digest(&self) -> &str {
        match self {
            Built::Image(i) => &i.manifest_digest,
            Built::Index(x) => &x.digest,
        }
    }

    pub fn media_type(&self) -> &str {
        match self {
            Built::Image(i) => &i.manifest_media_type,
            Built::Index(x) => &x.media_type,
        }
    }

    /// The top-level manifest or index bytes.
    pub fn bytes(&self) -> &Bytes {
        match self {
            Built::Image(i) => &i.manifest,
            Built::Index(x) => &x.index,
        }
    }

    /// The platform images (one for a plain image).
    pub fn images(&self) -> Vec<&BuiltImage> {
        match self {
            Built::Image(i) => vec![i],
            Built::Index(x) => x.images.iter().collect(),
        }
    }

    /// All config and layer blobs, deduplicated by digest, in first-seen order.
    pub fn blobs(&self) -> Vec<Blob> {
        let mut out: Vec<Blob> = Vec::new();
        for img in self.images() {
            for b in img.blobs() {
                if !out.iter().any(|o| o.digest == b.digest) {
                    out.push(b);
                }
            }
        }
        out
    }
}

/// Derives a per-layer seed from a corpus seed.
fn sub(seed: u64, n: u64) -> u64 {
    let mut z = seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn entry(repo: &str, tag: &str, b: Built) -> CorpusEntry {
    (repo.to_string(), tag.to_string(), b)
}

/// The test shapes with the default 64 MiB large layer.
pub fn corpus_shapes(seed: u64) -> Vec<CorpusEntry> {
    corpus_shapes_with(seed, 64 * MIB)
}

/// The test shapes with a `large_layer`-byte layer in `shapes/large`.
pub fn corpus_shapes_with(seed: u64, large_layer: usize) -> Vec<CorpusEntry> {
    let l = |n: u64, size: usize, files: usize| LayerSpec::new(sub(seed, n), size, files);
    let base = l(1, 8 * MIB, 50);
    let shared_a = ImageSpec::oci(vec![base.clone(), l(2, 4 * MIB, 10)]);
    let shared_b = ImageSpec::oci(vec![base, l(3, 4 * MIB, 10)]);
    let large = ImageSpec::oci(vec![l(4, large_layer, 4).compressibility(0.3)]);
    let many = ImageSpec::oci(
        (0..30u64)
            .map(|i| {
                let s = l(
                    100 + i,
                    (64 + 64 * (i as usize % 5)) * 1024,
                    1 + i as usize % 4,
                );
                if i == 0 {
                    s.compression(Compression::None)
                } else {
                    s
                }
            })
            .collect(),
    );
    let mut docker = ImageSpec::oci(vec![l(5, 4 * MIB, 8), l(6, 2 * MIB, 3)]);
    docker.format = Format::DockerV2;
    let zstd = ImageSpec::oci(vec![
        l(7, 4 * MIB, 8).compression(Compression::Zstd),
        l(8, 2 * MIB, 3).compression(Compression::Zstd),
    ]);
    let amd = ImageSpec::oci(vec![l(9, 2 * MIB, 5), l(10, 2 * MIB, 5)]);
    let mut arm = ImageSpec::oci(vec![l(11, 2 * MIB, 5), l(12, 2 * MIB, 5)]);
    arm.arch = "arm64".into();

    let images = [
        ("shapes/shared-a", &shared_a),
        ("shapes/shared-b", &shared_b),
        ("shapes/large", &large),
        ("shapes/many-small", &many),
        ("shapes/docker", &docker),
        ("shapes/zstd", &zstd),
    ];
    let mut cache = LayerCache::new();
    cache.prebuild(
        images
            .iter()
            .flat_map(|(_, s)| s.layers.iter())
            .chain(amd.layers.iter())
            .chain(arm.layers.iter()),
    );
    let mut out: Vec<CorpusEntry> = images
        .iter()
        .map(|(repo, s)| entry(repo, "v1", Built::Image(cache.build_image(s))))
        .collect();
    let idx = cache.build_index(&[amd, arm], Format::Oci);
    out.push(entry("shapes/multiarch", "v1", Built::Index(idx)));
    out
}

/// `images` OCI images (`bench/img-NN:v1`) of ≈ `total_bytes / images`
/// uncompressed bytes each: a base layer of 30% shared by all, plus 3 unique
/// layers. Sum of image sizes ≈ `total_bytes`; distinct bytes (what a node
/// downloads) ≈ 0.3 × per-image + 0.7 × `total_bytes`.
pub fn bench_corpus(images: usize, total_bytes: usize, seed: u64) -> Vec<CorpusEntry> {
    if images == 0 {
        return Vec::new();
    }
    let per = total_bytes / images;
    let base_size = per * 3 / 10;
    let base = LayerSpec::new(sub(seed, 0), base_size, 64);
    let unique = per - base_size;
    let specs: Vec<ImageSpec> = (0..images as u64)
        .map(|i| {
            let mut layers = vec![base.clone()];
            for j in 0..3u64 {
                let size = if j == 2 {
                    unique - 2 * (unique / 3)
                } else {
                    unique / 3
                };
                layers.push(LayerSpec::new(sub(seed, 1 + i * 3 + j), size, 16));
            }
            ImageSpec::oci(layers)
        })
        .collect();
    let mut cache = LayerCache::new();
    cache.prebuild(specs.iter().flat_map(|s| s.layers.iter()));
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let repo = format!("bench/img-{i:02}");
            entry(&repo, "v1", Built::Image(cache.build_image(s)))
        })
        .collect()
}

/// Four small images for the demo: `demo/web` and `demo/api` share an 8 MiB
/// base; `demo/worker` has zstd layers; `demo/batch` is Docker v2.
pub fn demo_corpus() -> Vec<CorpusEntry> {
    let seed = 0xde30;
    let l = |n: u64, size: usize, files: usize| LayerSpec::new(sub(seed, n), size, files);
    let base = l(1, 8 * MIB, 40);
    let web = ImageSpec::oci(vec![base.clone(), l(2, 6 * MIB, 20)]);
    let api = ImageSpec::oci(vec![base, l(3, 8 * MIB, 20)]);
    let worker = ImageSpec::oci(vec![
        l(4, 6 * MIB, 10).compression(Compression::Zstd),
        l(5, 4 * MIB, 10).compression(Compression::Zstd),
    ]);
    let mut batch = ImageSpec::oci(vec![l(6, 6 * MIB, 12)]);
    batch.format = Format::DockerV2;
    let all = [
        ("demo/web", web),
        ("demo/api", api),
        ("demo/worker", worker),
        ("demo/batch", batch),
    ];
    let mut cache = LayerCache::new();
    cache.prebuild(all.iter().flat_map(|(_, s)| s.layers.iter()));
    all.iter()
        .map(|(repo, s)| entry(repo, "1.0", Built::Image(cache.build_image(s))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gunzip_len(b: &Blob) -> u64 {
        let mut d = flate2::read::GzDecoder::new(&b.data[..]);
        std::io::copy(&mut d, &mut std::io::sink()).unwrap()
    }

    #[test]
    fn shapes_cover_the_cases() {
        let c = corpus_shapes_with(42, 2 * MIB);
        let names: Vec<&str> = c.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names.len(), 7);
        let get = |n: &str| &c.iter().find(|e| e.0 == n).unwrap().2;
        let (a, b) = (
            get("shapes/shared-a").images()[0],
            get("shapes/shared-b").images()[0],
        );
        assert_eq!(a.layers[0].digest, b.layers[0].digest);
        assert_ne!(a.layers[1].digest, b.layers[1].digest);
        assert_eq!(get("shapes/many-small").images()[0].layers.len(), 30);
        assert!(get("shapes/docker").media_type().contains("docker"));
        assert!(get("shapes/zstd").images()[0].layers[0]
            .media_type
            .ends_with("zstd"));
        let m = get("shapes/multiarch");
        assert!(matches!(m, Built::Index(_)));
        assert_eq!(m.images().len(), 2);
        assert_eq!(m.blobs().len(), 6);
        // deterministic across calls
        let again = corpus_shapes_with(42, 2 * MIB);
        for (x, y) in c.iter().zip(&again) {
            assert_eq!(x.2.digest(), y.2.digest());
        }
    }

    #[test]
    fn bench_corpus_shares_base_and_sums_up() {
        let total = 8 * MIB;
        let c = bench_corpus(4, total, 1);
        assert_eq!(c.len(), 4);
        let base = &c[0].2.images()[0].layers[0].digest;
        for (_, _, b) in &c {
            let img = b.images()[0];
            assert_eq!(&img.layers[0].digest, base);
            assert_eq!(img.layers.len(), 4);
        }
        let sum: u64 = c
            .iter()
            .flat_map(|e| e.2.images()[0].layers.clone())
            .map(|l| gunzip_len(&l))
            .sum();
        let ratio = sum as f64 / total as f64;
        assert!((1.0..1.1).contains(&ratio), "{ratio}");
        assert!(bench_corpus(0, total, 1).is_empty());
    }

    #[test]
    fn demo_corpus_is_small() {
        let c = demo_corpus();
        assert_eq!(c.len(), 4);
        let mut seen = std::collections::HashSet::new();
        let compressed: usize = c
            .iter()
            .flat_map(|e| e.2.blobs())
            .filter(|b| seen.insert(b.digest.clone()))
            .map(|b| b.data.len())
            .sum();
        assert!(
            compressed > 10 * MIB && compressed < 40 * MIB,
            "{compressed}"
        );
    }
}
