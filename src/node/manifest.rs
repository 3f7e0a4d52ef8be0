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
    #[error("unsupported layer media type {0:?}")]
    UnsupportedLayer(String),
}

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
            let index = ImageIndex::from_reader(body)
                .map_err(|e| ManifestError::Malformed(e.to_string()))?;
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
            let m = ImageManifest::from_reader(body)
                .map_err(|e| ManifestError::Malformed(e.to_string()))?;
            let desc = |d: &oci_spec::image::Descriptor| Descriptor {
                media_type: d.media_type().to_string(),
                digest: d.digest().to_string(),
                size: d.size(),
            };
            let layers: Vec<Descriptor> = m.layers().iter().map(desc).collect();
            for l in &layers {
                if !layer_supported(&l.media_type) {
                    return Err(ManifestError::UnsupportedLayer(l.media_type.clone()));
                }
            }
            Ok(Parsed::Image {
                config: desc(m.config()),
                layers,
            })
        }
        other => Err(ManifestError::UnsupportedMediaType(other.to_string())),
    }
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
}
