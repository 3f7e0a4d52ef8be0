//! Parsing of registry manifests (OCI and Docker v2 schema 2, single images
//! and indexes) and platform selection. Pure: bytes in, descriptors out.

use oci_spec::image::{ImageIndex, ImageManifest};

use crate::config::Platform;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Accept header for manifest requests, in containerd's order of preference.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest we accept (containerd uses the same bound).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformEntry {
    pub descriptor: Descriptor,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Index(Vec<PlatformEntry>),
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("unsupported manifest media type {0:?} (schema 1 and other legacy formats are not supported)")]
    UnsupportedMediaType(String),
    #[error("malformed manifest: {0}")]
    Malformed(String),
    #[error("no manifest for platform {wanted} in index (available: {available})")]
    NoPlatform { wanted: String, available: String },
    #[error("unsupported layer media type at {0}")]
    UnsupportedLayer(String),
}

/// The ingest ref containerd's own fetcher (`remotes.MakeRefKey`) uses for a
/// blob of `media_type`. Writing under the same ref makes a concurrent CRI
/// pull wait for our write instead of downloading the blob a second time.
pub fn ingest_ref(media_type: &str, digest: &str) -> String {
    // containerd strips `+suffix` parts (e.g. `+encrypted`) of layer types.
    let base = media_type.split('+').next().unwrap_or(media_type);
    let kind = match media_type {
        OCI_MANIFEST | DOCKER_MANIFEST | DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED => "manifest",
        OCI_INDEX | DOCKER_LIST => "index",
        _ if media_type.starts_with("application/vnd.oci.image.layer.")
            || DOCKER_LAYERS.contains(&base) =>
        {
            "layer"
        }
        _ if KNOWN_CONFIGS.contains(&media_type) => "config",
        _ => "unknown",
    };
    format!("{kind}-{digest}")
}

const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
const DOCKER_LAYERS: [&str; 5] = [
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];
const KNOWN_CONFIGS: [&str; 4] = [
    "application/vnd.docker.container.image.v1+json",
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.containerd.container.criu.checkpoint.criu.tar",
    "application/vnd.containerd.container.checkpoint.config.v1+proto",
];

/// Decides the media type from the header, falling back to the body.
pub fn media_type_of(header: Option<&str>, body: &[u8]) -> String {
    let header = header
        .map(|h| h.split(';').next().unwrap_or("").trim().to_string())
        .filter(|h| !h.is_empty() && h != "application/json" && h != "text/plain");
    if let Some(h) = header {
        return h;
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(body) {
        Ok(Probe {
            media_type: Some(m),
            ..
        }) => m,
        Ok(Probe {
            manifests: Some(_), ..
        }) => OCI_INDEX.to_string(),
        _ => OCI_MANIFEST.to_string(),
    }
}

pub fn parse(media_type: &str, body: &[u8]) -> Result<Parsed, ManifestError> {
    match media_type {
        OCI_INDEX | DOCKER_LIST => {
            let index: ImageIndex = decode(body)?;
            let entries = index
                .manifests()
                .iter()
                .map(|m| {
                    let (os, architecture, variant) = match m.platform() {
                        Some(p) => (
                            p.os().to_string(),
                            p.architecture().to_string(),
                            p.variant().clone(),
                        ),
                        None => (String::new(), String::new(), None),
                    };
                    PlatformEntry {
                        descriptor: Descriptor {
                            media_type: m.media_type().to_string(),
                            digest: m.digest().to_string(),
                            size: m.size(),
                        },
                        os,
                        architecture,
                        variant,
                    }
                })
                .collect();
            Ok(Parsed::Index(entries))
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let m: ImageManifest = decode(body)?;
            let desc = |d: &oci_spec::image::Descriptor| Descriptor {
                media_type: d.media_type().to_string(),
                digest: d.digest().to_string(),
                size: d.size(),
            };
            let layers: Vec<Descriptor> = m.layers().iter().map(desc).collect();
            if let Some((i, l)) = layers
                .iter()
                .enumerate()
                .find(|(_, l)| !layer_supported(&l.media_type))
            {
                let what = format!("layers[{i}].mediaType: {:?}", l.media_type);
                return Err(ManifestError::UnsupportedLayer(what));
            }
            Ok(Parsed::Image {
                config: desc(m.config()),
                layers,
            })
        }
        other => Err(ManifestError::UnsupportedMediaType(other.to_string())),
    }
}

/// Deserializes a whole JSON document; errors name the field (as a JSON
/// path) and the byte offset where parsing stopped.
fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ManifestError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let named = !matches!(path.as_str(), "." | "?");
        malformed(body, named.then_some(path), e.inner())
    })?;
    de.end().map_err(|e| malformed(body, None, &e))?;
    Ok(value)
}

fn malformed(body: &[u8], path: Option<String>, e: &serde_json::Error) -> ManifestError {
    // serde_json's message ends in " at line L column C"; a byte offset
    // is easier to find in a one-line document.
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let text = text.strip_suffix(&suffix).unwrap_or(&text);
    let field = path.map(|p| format!("{p}: ")).unwrap_or_default();
    let at = byte_offset(body, e.line(), e.column());
    ManifestError::Malformed(format!("{field}{text} (at byte {at})"))
}

/// The offset of 1-based `line` and `column` in `body`, within its bounds.
fn byte_offset(body: &[u8], line: usize, column: usize) -> usize {
    let line_start: usize = body
        .split(|b| *b == b'\n')
        .take(line.saturating_sub(1))
        .map(|l| l.len() + 1)
        .sum();
    (line_start + column.saturating_sub(1)).min(body.len())
}

fn layer_supported(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.oci.image.layer.")
        || media_type.starts_with("application/vnd.docker.image.rootfs.")
        || media_type.starts_with("application/vnd.oci.image.layer.nondistributable")
}

/// The node's platform as OCI names it.
pub fn host_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    };
    Platform {
        os: "linux".to_string(),
        architecture: architecture.to_string(),
        variant: None,
    }
}

fn normalize_variant(arch: &str, variant: Option<&str>) -> Option<String> {
    match (arch, variant) {
        ("arm64", None | Some("v8")) => None,
        (_, Some("")) | (_, None) => None,
        (_, Some(v)) => Some(v.to_string()),
    }
}

/// Picks the index entry for `want` like containerd's default matcher:
/// os and architecture must match; a wanted variant must match exactly,
/// and without one the first entry for the architecture wins.
pub fn select_platform<'a>(
    entries: &'a [PlatformEntry],
    want: &Platform,
) -> Result<&'a PlatformEntry, ManifestError> {
    let want_variant = normalize_variant(&want.architecture, want.variant.as_deref());
    let matching = entries.iter().filter(|e| {
        e.os == want.os
            && e.architecture == want.architecture
            && (want_variant.is_none()
                || normalize_variant(&e.architecture, e.variant.as_deref()) == want_variant)
    });
    matching.into_iter().next().ok_or_else(|| {
        let available = entries
            .iter()
            .map(|e| match &e.variant {
                Some(v) => format!("{}/{}/{}", e.os, e.architecture, v),
                None => format!("{}/{}", e.os, e.architecture),
            })
            .collect::<Vec<_>>()
            .join(", ");
        ManifestError::NoPlatform {
            wanted: want.to_string(),
            available,
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn ingest_refs_match_containerd_make_ref_key() {
        let d = "sha256:ab";
        let cases = [
            (super::OCI_MANIFEST, "manifest-sha256:ab"),
            (super::DOCKER_MANIFEST, "manifest-sha256:ab"),
            (super::OCI_INDEX, "index-sha256:ab"),
            (super::DOCKER_LIST, "index-sha256:ab"),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                "layer-sha256:ab",
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                "layer-sha256:ab",
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "layer-sha256:ab",
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip+encrypted",
                "layer-sha256:ab",
            ),
            (
                "application/vnd.oci.image.config.v1+json",
                "config-sha256:ab",
            ),
            (
                "application/vnd.docker.container.image.v1+json",
                "config-sha256:ab",
            ),
            ("application/vnd.example.thing", "unknown-sha256:ab"),
        ];
        for (mt, want) in cases {
            assert_eq!(super::ingest_ref(mt, d), want, "{mt}");
        }
    }

    use super::*;

    fn entry(arch: &str, variant: Option<&str>, digest: &str) -> PlatformEntry {
        PlatformEntry {
            descriptor: Descriptor {
                media_type: OCI_MANIFEST.into(),
                digest: digest.into(),
                size: 1,
            },
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.map(str::to_string),
        }
    }

    fn platform(arch: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.map(str::to_string),
        }
    }

    #[test]
    fn selects_matching_platform() {
        let entries = vec![
            entry("arm", Some("v7"), "a"),
            entry("arm64", Some("v8"), "b"),
            entry("amd64", None, "c"),
        ];
        assert_eq!(
            select_platform(&entries, &platform("amd64", None))
                .unwrap()
                .descriptor
                .digest,
            "c"
        );
        assert_eq!(
            select_platform(&entries, &platform("arm64", None))
                .unwrap()
                .descriptor
                .digest,
            "b"
        );
        assert_eq!(
            select_platform(&entries, &platform("arm", Some("v7")))
                .unwrap()
                .descriptor
                .digest,
            "a"
        );
        let err = select_platform(&entries, &platform("s390x", None)).unwrap_err();
        assert!(
            err.to_string()
                .contains("linux/arm/v7, linux/arm64/v8, linux/amd64"),
            "{err}"
        );
    }

    #[test]
    fn media_type_from_header_or_body() {
        assert_eq!(
            media_type_of(
                Some("application/vnd.oci.image.index.v1+json; charset=utf-8"),
                b""
            ),
            OCI_INDEX
        );
        assert_eq!(
            media_type_of(
                None,
                br#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#
            ),
            DOCKER_MANIFEST
        );
        assert_eq!(
            media_type_of(
                Some("application/json"),
                br#"{"schemaVersion":2,"manifests":[]}"#
            ),
            OCI_INDEX
        );
    }

    #[test]
    fn rejects_garbage_and_schema1() {
        assert!(matches!(
            parse(OCI_MANIFEST, b"{not json"),
            Err(ManifestError::Malformed(_))
        ));
        assert!(matches!(
            parse(
                "application/vnd.docker.distribution.manifest.v1+prettyjws",
                b"{}"
            ),
            Err(ManifestError::UnsupportedMediaType(_))
        ));
    }

    /// oci-spec's own errors said only "serde failed".
    #[test]
    fn malformed_errors_name_the_field_and_offset() {
        let err = parse(OCI_MANIFEST, b"{not json").unwrap_err().to_string();
        assert_eq!(err, "malformed manifest: key must be a string (at byte 1)");
        let body = br#"{"schemaVersion":2,"config":{"mediaType":"a","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":"7"},"layers":[]}"#;
        let err = parse(OCI_MANIFEST, body).unwrap_err().to_string();
        assert_eq!(
            err,
            r#"malformed manifest: config.size: invalid type: string "7", expected u64 (at byte 137)"#
        );
        let err = parse(OCI_INDEX, br#"{"schemaVersion":2,"manifests":[]} x"#)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "malformed manifest: trailing characters (at byte 35)");
    }

    #[test]
    fn parses_docker_v2_manifest() {
        let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
          "config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":7,"digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111"},
          "layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":9,"digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222"}]}"#;
        match parse(DOCKER_MANIFEST, body).unwrap() {
            Parsed::Image { config, layers } => {
                assert_eq!(config.size, 7);
                assert_eq!(layers.len(), 1);
                assert_eq!(layers[0].size, 9);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

        fn digest(seed: u8) -> String {
            format!("sha256:{}", format!("{seed:02x}").repeat(32))
        }

        fn descriptor(media_type: &str, seed: u8, size: u64) -> String {
            format!(
                r#"{{"mediaType":"{media_type}","digest":"{}","size":{size}}}"#,
                digest(seed)
            )
        }

        /// A valid OCI image manifest with these layer sizes.
        fn manifest(sizes: &[u64]) -> String {
            let layers: Vec<String> = sizes
                .iter()
                .enumerate()
                .map(|(i, s)| descriptor(LAYER_GZIP, i as u8 + 1, *s))
                .collect();
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{}]}}"#,
                descriptor("application/vnd.oci.image.config.v1+json", 0, 7),
                layers.join(",")
            )
        }

        /// A valid OCI index with one entry per architecture.
        fn index(archs: &[&str]) -> String {
            let entries: Vec<String> = archs
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let d = descriptor(OCI_MANIFEST, i as u8, 100);
                    format!(
                        r#"{},"platform":{{"os":"linux","architecture":"{a}"}}}}"#,
                        &d[..d.len() - 1]
                    )
                })
                .collect();
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
                entries.join(",")
            )
        }

        const MEDIA_TYPES: [&str; 5] = [
            OCI_MANIFEST,
            OCI_INDEX,
            DOCKER_MANIFEST,
            DOCKER_LIST,
            "text/html",
        ];

        /// Never a panic; a malformed document's error names the field
        /// (a JSON path) or the byte offset where parsing stopped.
        fn check(media_type: &str, body: &[u8]) -> Result<(), TestCaseError> {
            match parse(media_type, body) {
                Ok(_) | Err(ManifestError::UnsupportedMediaType(_)) => {}
                Err(ManifestError::Malformed(msg)) => {
                    prop_assert!(msg.contains("at byte "), "no byte offset: {msg}");
                }
                Err(ManifestError::UnsupportedLayer(msg)) => {
                    prop_assert!(msg.starts_with("layers["), "no field: {msg}");
                }
                Err(e @ ManifestError::NoPlatform { .. }) => {
                    prop_assert!(false, "parse never selects: {e}");
                }
            }
            Ok(())
        }

        /// A mutation of a document: overwrite, insert or delete one byte,
        /// or cut it short.
        fn mutate(doc: &str, at: usize, byte: u8, how: u8) -> Vec<u8> {
            let mut b = doc.as_bytes().to_vec();
            let at = at % (b.len() + 1);
            match how % 4 {
                0 if at < b.len() => b[at] = byte,
                1 => b.insert(at, byte),
                2 if at < b.len() => {
                    b.remove(at);
                }
                _ => b.truncate(at),
            }
            b
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..400), mt in 0..5usize) {
                check(MEDIA_TYPES[mt], &body)?;
            }

            #[test]
            fn arbitrary_json_text(body in r#"[\[\]{}",:0-9a-zA-Z ]{0,200}"#, mt in 0..4usize) {
                check(MEDIA_TYPES[mt], body.as_bytes())?;
            }

            #[test]
            fn valid_manifests_parse(sizes in prop::collection::vec(0u64..u64::MAX / 2, 0..8)) {
                match parse(OCI_MANIFEST, manifest(&sizes).as_bytes()) {
                    Ok(Parsed::Image { config, layers }) => {
                        prop_assert_eq!(config.size, 7);
                        let got: Vec<u64> = layers.iter().map(|l| l.size).collect();
                        prop_assert_eq!(got, sizes);
                    }
                    other => prop_assert!(false, "{:?}", other),
                }
            }

            #[test]
            fn mutated_manifests(
                sizes in prop::collection::vec(0u64..1 << 40, 1..5),
                at in any::<usize>(), byte in any::<u8>(), how in any::<u8>(), mt in 0..4usize,
            ) {
                check(MEDIA_TYPES[mt], &mutate(&manifest(&sizes), at, byte, how))?;
            }

            #[test]
            fn mutated_indexes(
                n in 1usize..4, at in any::<usize>(), byte in any::<u8>(), how in any::<u8>(),
            ) {
                let doc = index(&["amd64", "arm64", "s390x"][..n]);
                check(OCI_INDEX, &mutate(&doc, at, byte, how))?;
            }

            /// A wrong type for a layer's size names that field.
            #[test]
            fn wrong_field_type_is_named(sizes in prop::collection::vec(0u64..1000, 1..5), pick in any::<usize>()) {
                let i = pick % sizes.len();
                let doc = manifest(&sizes);
                let needle = format!(r#""digest":"{}","size":{}"#, digest(i as u8 + 1), sizes[i]);
                let bad = format!(r#""digest":"{}","size":"big""#, digest(i as u8 + 1));
                let doc = doc.replacen(&needle, &bad, 1);
                let err = parse(OCI_MANIFEST, doc.as_bytes()).unwrap_err().to_string();
                let field = format!("layers[{i}].size");
                prop_assert!(err.contains(&field), "{err} does not name {field}");
            }

            #[test]
            fn unsupported_layer_is_named(pick in 0usize..3) {
                let doc = manifest(&[1, 2, 3]).replacen(LAYER_GZIP, "x/y", pick + 1)
                    .replacen("x/y", LAYER_GZIP, pick);
                let err = parse(OCI_MANIFEST, doc.as_bytes()).unwrap_err().to_string();
                let field = format!("layers[{pick}].mediaType");
                prop_assert!(err.contains(&field), "{err} does not name {field}");
            }
        }
    }
}
