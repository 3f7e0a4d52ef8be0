//! Deterministic OCI / Docker v2 image generator: configs, manifests and
//! indexes (via oci-spec types) over layers from [`super::layer`].
//!
//! Same [`ImageSpec`] ⇒ same manifest digest; layers with equal specs are
//! byte-identical, so they are shared across images.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use oci_spec::image::{
    Arch, Config, Descriptor, Digest, ImageConfiguration, ImageIndex, ImageManifestBuilder,
    MediaType, Os, Platform, RootFs,
};

pub use super::corpus::{
    bench_corpus, corpus_shapes, corpus_shapes_with, demo_corpus, Built, CorpusEntry,
};
pub use super::layer::{build_layer, sha256_digest, Blob, BuiltLayer, Compression, LayerSpec};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Fixed creation time in configs, for reproducibility.
const CREATED: &str = "2023-11-14T22:13:20Z";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Oci,
    /// Docker image manifest v2 schema 2. Layers are always gzip: a
    /// `LayerSpec` asking for zstd/none is built as gzip in this format.
    DockerV2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ImageSpec {
    pub layers: Vec<LayerSpec>,
    pub format: Format,
    pub arch: String,
    pub os: String,
}

impl ImageSpec {
    /// A linux/amd64 OCI image.
    pub fn oci(layers: Vec<LayerSpec>) -> Self {
        Self {
            layers,
            format: Format::Oci,
            arch: "amd64".into(),
            os: "linux".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub manifest: Bytes,
    pub manifest_media_type: String,
    pub manifest_digest: String,
    pub config: Bytes,
    pub config_digest: String,
    pub layers: Vec<Blob>,
    pub diff_ids: Vec<String>,
}

impl BuiltImage {
    pub fn config_media_type(&self) -> &'static str {
        if self.manifest_media_type == DOCKER_MANIFEST {
            DOCKER_CONFIG
        } else {
            OCI_CONFIG
        }
    }

    /// The config blob followed by the layer blobs.
    pub fn blobs(&self) -> Vec<Blob> {
        let mut out = vec![Blob {
            digest: self.config_digest.clone(),
            media_type: self.config_media_type().into(),
            data: self.config.clone(),
        }];
        out.extend(self.layers.iter().cloned());
        out
    }

    /// Sum of compressed layer sizes (what a puller downloads, minus config/manifest).
    pub fn compressed_size(&self) -> u64 {
        self.layers.iter().map(|b| b.data.len() as u64).sum()
    }
}

#[derive(Debug, Clone)]
pub struct BuiltIndex {
    pub index: Bytes,
    pub media_type: String,
    pub digest: String,
    pub images: Vec<BuiltImage>,
}

/// Builds one image (its layers in parallel).
pub fn build_image(spec: &ImageSpec) -> BuiltImage {
    let mut cache = LayerCache::new();
    cache.build_image(spec)
}

/// Builds an OCI index / Docker manifest list over `images`; each child is
/// built in `format` regardless of its own `format` field.
pub fn build_index(images: &[ImageSpec], format: Format) -> BuiltIndex {
    let mut cache = LayerCache::new();
    cache.build_index(images, format)
}

/// Memoises layers by spec so shared layers are generated once; builds missing
/// layers on all cores.
#[derive(Default)]
pub struct LayerCache {
    map: HashMap<LayerKey, BuiltLayer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LayerKey(usize, usize, Compression, u64, u32);

impl LayerKey {
    fn of(s: &LayerSpec) -> Self {
        LayerKey(
            s.size,
            s.files,
            s.compression,
            s.seed,
            s.compressibility.to_bits(),
        )
    }
}

impl LayerCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds every not-yet-cached layer in parallel.
    pub fn prebuild<'a>(&mut self, specs: impl IntoIterator<Item = &'a LayerSpec>) {
        let mut todo: Vec<LayerSpec> = Vec::new();
        for s in specs {
            let k = LayerKey::of(s);
            if !self.map.contains_key(&k) && !todo.iter().any(|t| LayerKey::of(t) == k) {
                todo.push(s.clone());
            }
        }
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(todo.len());
        if threads <= 1 {
            for s in &todo {
                self.map.insert(LayerKey::of(s), build_layer(s));
            }
            return;
        }
        // Biggest first so the tail is short.
        todo.sort_by_key(|s| std::cmp::Reverse(s.size));
        let next = AtomicUsize::new(0);
        let out = Mutex::new(Vec::with_capacity(todo.len()));
        std::thread::scope(|sc| {
            for _ in 0..threads {
                sc.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(s) = todo.get(i) else { break };
                    let built = build_layer(s);
                    if let Ok(mut o) = out.lock() {
                        o.push((LayerKey::of(s), built));
                    }
                });
            }
        });
        for (k, v) in out.into_inner().unwrap_or_default() {
            self.map.insert(k, v);
        }
    }

    pub fn layer(&mut self, spec: &LayerSpec) -> BuiltLayer {
        self.map
            .entry(LayerKey::of(spec))
            .or_insert_with(|| build_layer(spec))
            .clone()
    }

    pub fn build_image(&mut self, spec: &ImageSpec) -> BuiltImage {
        let spec = normalize(spec, spec.format);
        self.prebuild(&spec.layers);
        let layers: Vec<BuiltLayer> = spec.layers.iter().map(|l| self.layer(l)).collect();
        assemble(&spec, &layers)
    }

    pub fn build_index(&mut self, images: &[ImageSpec], format: Format) -> BuiltIndex {
        let specs: Vec<ImageSpec> = images.iter().map(|s| normalize(s, format)).collect();
        self.prebuild(specs.iter().flat_map(|s| s.layers.iter()));
        let built: Vec<BuiltImage> = specs.iter().map(|s| self.build_image(s)).collect();
        let mut descs = Vec::with_capacity(built.len());
        for (spec, img) in specs.iter().zip(&built) {
            let mut d = Descriptor::new(
                MediaType::from(img.manifest_media_type.as_str()),
                img.manifest.len() as u64,
                oci_digest(&img.manifest_digest),
            );
            let mut p = Platform::default();
            p.set_architecture(Arch::from(spec.arch.as_str()));
            p.set_os(Os::from(spec.os.as_str()));
            d.set_platform(Some(p));
            descs.push(d);
        }
        let media_type = match format {
            Format::Oci => OCI_INDEX,
            Format::DockerV2 => DOCKER_MANIFEST_LIST,
        };
        let mut index = ImageIndex::default();
        index.set_schema_version(2);
        index.set_media_type(Some(MediaType::from(media_type)));
        index.set_manifests(descs);
        let bytes = to_json(&index);
        BuiltIndex {
            digest: sha256_digest(&bytes),
            index: bytes,
            media_type: media_type.into(),
            images: built,
        }
    }
}

/// Applies `format` and forces gzip layers for Docker v2.
fn normalize(spec: &ImageSpec, format: Format) -> ImageSpec {
    let mut s = spec.clone();
    s.format = format;
    if format == Format::DockerV2 {
        for l in &mut s.layers {
            l.compression = Compression::Gzip;
        }
    }
    s
}

fn assemble(spec: &ImageSpec, layers: &[BuiltLayer]) -> BuiltImage {
    let docker = spec.format == Format::DockerV2;
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();

    let mut rootfs = RootFs::default();
    rootfs.set_diff_ids(diff_ids.clone());
    let mut cfg = Config::default();
    cfg.set_env(Some(vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    ]));
    cfg.set_cmd(Some(vec!["/bin/sh".into()]));
    let mut conf = ImageConfiguration::default();
    conf.set_created(Some(CREATED.into()));
    conf.set_architecture(Arch::from(spec.arch.as_str()));
    conf.set_os(Os::from(spec.os.as_str()));
    conf.set_config(Some(cfg));
    conf.set_rootfs(rootfs);
    let config = to_json(&conf);
    let config_digest = sha256_digest(&config);

    let (manifest_mt, config_mt) = if docker {
        (DOCKER_MANIFEST, DOCKER_CONFIG)
    } else {
        (OCI_MANIFEST, OCI_CONFIG)
    };
    let blobs: Vec<Blob> = layers
        .iter()
        .map(|l| {
            let mut b = l.blob.clone();
            if docker {
                b.media_type = DOCKER_LAYER_GZIP.into();
            }
            b
        })
        .collect();
    let layer_descs: Vec<Descriptor> = blobs
        .iter()
        .map(|b| {
            Descriptor::new(
                MediaType::from(b.media_type.as_str()),
                b.data.len() as u64,
                oci_digest(&b.digest),
            )
        })
        .collect();
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::from(manifest_mt))
        .config(Descriptor::new(
            MediaType::from(config_mt),
            config.len() as u64,
            oci_digest(&config_digest),
        ))
        .layers(layer_descs)
        .build()
        .expect("all required manifest fields are set");
    let manifest = to_json(&manifest);
    BuiltImage {
        manifest_digest: sha256_digest(&manifest),
        manifest,
        manifest_media_type: manifest_mt.into(),
        config,
        config_digest,
        layers: blobs,
        diff_ids,
    }
}

fn oci_digest(d: &str) -> Digest {
    Digest::from_str(d).expect("sha256_digest output is a valid digest")
}

fn to_json<T: serde::Serialize>(v: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(v).expect("oci-spec types serialize"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::ImageManifest;

    #[test]
    fn oci_image_manifest_and_config_are_consistent() {
        let spec = ImageSpec::oci(vec![
            LayerSpec::new(1, 10_000, 2),
            LayerSpec::new(2, 20_000, 2).compression(Compression::Zstd),
        ]);
        let img = build_image(&spec);
        assert_eq!(img.manifest_digest, sha256_digest(&img.manifest));
        let m: ImageManifest = serde_json::from_slice(&img.manifest).unwrap();
        assert_eq!(m.media_type().as_ref().unwrap().to_string(), OCI_MANIFEST);
        assert_eq!(m.config().digest().to_string(), img.config_digest);
        assert_eq!(m.config().size(), img.config.len() as u64);
        assert_eq!(m.layers()[1].media_type().to_string(), OCI_LAYER_ZSTD);
        let c: ImageConfiguration = serde_json::from_slice(&img.config).unwrap();
        assert_eq!(c.rootfs().diff_ids(), &img.diff_ids);
        assert_eq!(c.architecture().to_string(), "amd64");
        assert_eq!(c.os().to_string(), "linux");
        // rebuild ⇒ identical manifest
        assert_eq!(build_image(&spec).manifest, img.manifest);
        assert_eq!(img.blobs().len(), 3);
    }

    #[test]
    fn docker_v2_forces_gzip_and_docker_media_types() {
        let mut spec = ImageSpec::oci(vec![
            LayerSpec::new(1, 5000, 1).compression(Compression::Zstd)
        ]);
        spec.format = Format::DockerV2;
        let img = build_image(&spec);
        let v: serde_json::Value = serde_json::from_slice(&img.manifest).unwrap();
        assert_eq!(v["mediaType"], DOCKER_MANIFEST);
        assert_eq!(v["config"]["mediaType"], DOCKER_CONFIG);
        assert_eq!(v["layers"][0]["mediaType"], DOCKER_LAYER_GZIP);
        assert_eq!(&img.layers[0].data[..2], &[0x1f, 0x8b]);
    }

    #[test]
    fn index_has_platforms() {
        let mut arm = ImageSpec::oci(vec![LayerSpec::new(9, 1000, 1)]);
        arm.arch = "arm64".into();
        let amd = ImageSpec::oci(vec![LayerSpec::new(8, 1000, 1)]);
        for (f, mt, child) in [
            (Format::Oci, OCI_INDEX, OCI_MANIFEST),
            (Format::DockerV2, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST),
        ] {
            let idx = build_index(&[amd.clone(), arm.clone()], f);
            assert_eq!(idx.media_type, mt);
            assert_eq!(idx.digest, sha256_digest(&idx.index));
            let v: serde_json::Value = serde_json::from_slice(&idx.index).unwrap();
            assert_eq!(v["mediaType"], mt);
            assert_eq!(v["manifests"][0]["platform"]["architecture"], "amd64");
            assert_eq!(v["manifests"][1]["platform"]["architecture"], "arm64");
            assert_eq!(v["manifests"][1]["platform"]["os"], "linux");
            assert_eq!(v["manifests"][1]["mediaType"], child);
            assert_eq!(
                v["manifests"][1]["digest"],
                idx.images[1].manifest_digest.as_str()
            );
        }
    }

    #[test]
    fn empty_specs_do_not_panic() {
        let img = build_image(&ImageSpec::oci(vec![]));
        assert!(img.layers.is_empty());
        let idx = build_index(&[], Format::Oci);
        assert!(idx.images.is_empty());
    }
}
