//! Container image references, parsed and normalized the way the kubelet and
//! containerd's CRI plugin do it (the docker/distribution reference grammar):
//! `nginx` becomes `docker.io/library/nginx:latest`.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Registry used when a reference names none.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// Tag used when a reference has neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
const LEGACY_DEFAULT_REGISTRY: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const NAME_MAX_LEN: usize = 255;
const TAG_MAX_LEN: usize = 128;

/// Why an image reference was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {input:?}: {kind}")]
pub struct ReferenceError {
    pub input: String,
    pub kind: ReferenceErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceErrorKind {
    #[error("reference is empty")]
    Empty,
    #[error("repository is empty")]
    EmptyRepository,
    #[error("repository must be lowercase")]
    Uppercase,
    #[error("invalid character {0:?} in repository")]
    InvalidCharacter(char),
    #[error("invalid repository path component {0:?}")]
    InvalidComponent(String),
    #[error("repository name is {0} characters long, at most 255 are allowed")]
    NameTooLong(usize),
    #[error("reference is a 64-character hexadecimal image id, not a repository name")]
    HexIdentifier,
    #[error("invalid registry host {0:?}")]
    InvalidRegistry(String),
    #[error("invalid registry port {0:?}: must be a number from 1 to 65535")]
    InvalidPort(String),
    #[error("tag is empty")]
    EmptyTag,
    #[error("tag is {0} characters long, at most 128 are allowed")]
    TagTooLong(usize),
    #[error("invalid tag {0:?}: must start with a letter, digit or '_' and contain only letters, digits, '_', '.' and '-'")]
    InvalidTag(String),
    #[error("{0}")]
    Digest(DigestErrorKind),
}

/// Why a digest was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {input:?}: {kind}")]
pub struct DigestError {
    pub input: String,
    pub kind: DigestErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestErrorKind {
    #[error("digest must look like <algorithm>:<hex>")]
    Format,
    #[error("unsupported digest algorithm {0:?} (expected sha256 or sha512)")]
    Algorithm(String),
    #[error("{algorithm} digest must have {expected} hex characters, found {found}")]
    Length {
        algorithm: DigestAlgorithm,
        expected: usize,
        found: usize,
    },
    #[error("digest hex must be lowercase [0-9a-f]")]
    Hex,
}

/// Hash algorithms accepted in digests (the OCI registered ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestAlgorithm {
    Sha256,
    Sha512,
}

impl DigestAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }

    /// Length of the hex encoding of this algorithm's output.
    pub fn hex_len(self) -> usize {
        match self {
            Self::Sha256 => 64,
            Self::Sha512 => 128,
        }
    }
}

impl fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A content digest such as `sha256:<64 lowercase hex>`; always valid once built.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: DigestAlgorithm,
    hex: String,
}

impl Digest {
    /// Builds a digest from an algorithm and its lowercase hex encoding.
    pub fn new(algorithm: DigestAlgorithm, hex: &str) -> Result<Self, DigestError> {
        check_hex(algorithm, hex)
            .map(|()| Self {
                algorithm,
                hex: hex.to_owned(),
            })
            .map_err(|kind| DigestError {
                input: format!("{algorithm}:{hex}"),
                kind,
            })
    }

    pub fn algorithm(&self) -> DigestAlgorithm {
        self.algorithm
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }
}

fn parse_digest(s: &str) -> Result<Digest, DigestErrorKind> {
    let (algorithm, hex) = s.split_once(':').ok_or(DigestErrorKind::Format)?;
    let algorithm = match algorithm {
        "sha256" => DigestAlgorithm::Sha256,
        "sha512" => DigestAlgorithm::Sha512,
        "" => return Err(DigestErrorKind::Format),
        other => return Err(DigestErrorKind::Algorithm(other.to_owned())),
    };
    check_hex(algorithm, hex)?;
    Ok(Digest {
        algorithm,
        hex: hex.to_owned(),
    })
}

fn check_hex(algorithm: DigestAlgorithm, hex: &str) -> Result<(), DigestErrorKind> {
    if hex.len() != algorithm.hex_len() {
        return Err(DigestErrorKind::Length {
            algorithm,
            expected: algorithm.hex_len(),
            found: hex.chars().count(),
        });
    }
    if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(DigestErrorKind::Hex);
    }
    Ok(())
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_digest(s).map_err(|kind| DigestError {
            input: s.to_owned(),
            kind,
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex)
    }
}

/// A fully normalized image reference: `registry/repository[:tag][@digest]`.
///
/// After parsing, `tag` is `None` only when a digest is present.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    /// Registry host with optional port, e.g. `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Path within the registry, e.g. `library/nginx`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The name CRI and the kubelet use: `name@digest` if there is a
    /// digest, else `name:tag` (tag `latest` when none).
    pub fn cri_name(&self) -> String {
        match (&self.tag, &self.digest) {
            (_, Some(d)) => format!("{}@{}", self.name(), d),
            (Some(t), None) => format!("{}:{}", self.name(), t),
            (None, None) => format!("{}:latest", self.name()),
        }
    }

    /// The same image pinned to `digest`; the tag is kept.
    pub fn with_digest(&self, digest: Digest) -> ImageRef {
        ImageRef {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// `registry/repository:tag` without the digest, if the reference has a tag.
    pub fn tag_ref(&self) -> Option<ImageRef> {
        self.tag.as_ref().map(|tag| ImageRef {
            tag: Some(tag.clone()),
            digest: None,
            ..self.clone()
        })
    }

    /// `registry/repository@digest` without the tag, if the reference has a digest.
    pub fn digest_ref(&self) -> Option<ImageRef> {
        self.digest.as_ref().map(|digest| ImageRef {
            tag: None,
            digest: Some(digest.clone()),
            ..self.clone()
        })
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_reference(s).map_err(|kind| ReferenceError {
            input: s.to_owned(),
            kind,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

fn parse_reference(s: &str) -> Result<ImageRef, ReferenceErrorKind> {
    use ReferenceErrorKind as K;
    if s.is_empty() {
        return Err(K::Empty);
    }
    // A bare image ID is not a name (docker refuses it the same way).
    if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(K::HexIdentifier);
    }
    let (rest, digest) = match s.split_once('@') {
        Some((rest, digest)) => (rest, Some(parse_digest(digest).map_err(K::Digest)?)),
        None => (s, None),
    };
    // A ':' after the last '/' starts the tag; earlier ones belong to a port.
    let last_slash = rest.rfind('/');
    let (name, tag) = match rest.rfind(':') {
        Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
            (&rest[..colon], Some(&rest[colon + 1..]))
        }
        _ => (rest, None),
    };
    if let Some(tag) = tag {
        check_tag(tag)?;
    }
    let (registry, repository) = split_registry(name);
    if registry != DEFAULT_REGISTRY {
        check_registry(&registry)?;
    }
    check_repository(&repository)?;
    let full_len = registry.len() + 1 + repository.len();
    if full_len > NAME_MAX_LEN {
        return Err(K::NameTooLong(full_len));
    }
    let tag = match (tag, &digest) {
        (Some(tag), _) => Some(tag.to_owned()),
        (None, None) => Some(DEFAULT_TAG.to_owned()),
        (None, Some(_)) => None,
    };
    Ok(ImageRef {
        registry,
        repository,
        tag,
        digest,
    })
}

/// Splits off the registry like docker's `splitDockerDomain`: the first path
/// element is a registry when it is `localhost`, contains `.` or `:`, or has
/// uppercase letters (Docker Hub namespaces cannot).
fn split_registry(name: &str) -> (String, String) {
    let (registry, remainder) = match name.split_once('/') {
        Some((first, rest))
            if first == "localhost"
                || first.contains(['.', ':'])
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            let registry = if first == LEGACY_DEFAULT_REGISTRY {
                DEFAULT_REGISTRY
            } else {
                first
            };
            (registry, rest)
        }
        _ => (DEFAULT_REGISTRY, name),
    };
    let repository = if registry == DEFAULT_REGISTRY && !remainder.contains('/') {
        format!("{OFFICIAL_REPO_PREFIX}{remainder}")
    } else {
        remainder.to_owned()
    };
    (registry.to_owned(), repository)
}

/// `host[:port]` where host is a DNS name, IPv4 address or `[IPv6]`.
fn check_registry(registry: &str) -> Result<(), ReferenceErrorKind> {
    let bad_host = || ReferenceErrorKind::InvalidRegistry(registry.to_owned());
    let port = if let Some(inner) = registry.strip_prefix('[') {
        let (addr, after) = inner.split_once(']').ok_or_else(bad_host)?;
        if addr.is_empty() || !addr.bytes().all(|b| b == b':' || b.is_ascii_hexdigit()) {
            return Err(bad_host());
        }
        match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(bad_host)?),
        }
    } else {
        let (host, port) = match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        };
        if !host.split('.').all(valid_domain_component) {
            return Err(bad_host());
        }
        port
    };
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|p| p != 0);
        if !valid {
            return Err(ReferenceErrorKind::InvalidPort(port.to_owned()));
        }
    }
    Ok(())
}

/// `[a-zA-Z0-9]` or `[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`.
fn valid_domain_component(c: &str) -> bool {
    let b = c.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
        }
        _ => false,
    }
}

/// `component ('/' component)*`, component = `[a-z0-9]+ (separator [a-z0-9]+)*`
/// with separator `.`, `_`, `__` or one or more `-`.
fn check_repository(repository: &str) -> Result<(), ReferenceErrorKind> {
    use ReferenceErrorKind as K;
    if repository.is_empty() || repository == OFFICIAL_REPO_PREFIX {
        return Err(K::EmptyRepository);
    }
    if repository.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(K::Uppercase);
    }
    if let Some(bad) = repository
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-' | '/'))
    {
        return Err(K::InvalidCharacter(bad));
    }
    match repository.split('/').find(|c| !valid_path_component(c)) {
        Some(bad) => Err(K::InvalidComponent(bad.to_owned())),
        None => Ok(()),
    }
}

fn valid_path_component(component: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    // Every run of non-alphanumerics between alphanumerics must be a separator.
    component
        .split(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        .filter(|sep| !sep.is_empty())
        .all(|sep| matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-'))
}

/// `[\w][\w.-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), ReferenceErrorKind> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let Some(&first) = tag.as_bytes().first() else {
        return Err(ReferenceErrorKind::EmptyTag);
    };
    if !word(first) || !tag.bytes().all(|b| word(b) || b == b'.' || b == b'-') {
        return Err(ReferenceErrorKind::InvalidTag(tag.to_owned()));
    }
    if tag.len() > TAG_MAX_LEN {
        return Err(ReferenceErrorKind::TagTooLong(tag.len()));
    }
    Ok(())
}

macro_rules! string_serde {
    ($ty:ty, $expecting:literal) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl de::Visitor<'_> for Visitor {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.parse().map_err(E::custom)
                    }
                }
                deserializer.deserialize_str(Visitor)
            }
        }
    };
}

string_serde!(ImageRef, "an image reference such as \"nginx:1.27\"");
string_serde!(Digest, "a digest such as \"sha256:<64 hex characters>\"");

#[cfg(test)]
mod tests {
    use super::*;

    const HEX64: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// Table-driven: each fixture line is `input<TAB>normalized` or
    /// `input<TAB>error: <message>`; `$HEX64` stands for 64 hex digits.
    #[test]
    fn reference_table() {
        let table = include_str!("../../tests/fixtures/config/references.tsv");
        let mut cases = 0;
        for line in table
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let line = line.replace("$HEX64", HEX64);
            let (input, want) = line.split_once('\t').expect("input<TAB>expected");
            let got = match input.parse::<ImageRef>() {
                Ok(r) => r.to_string(),
                Err(e) => format!("error: {}", e.kind),
            };
            assert_eq!(got, want, "input {input:?}");
            if let Ok(r) = input.parse::<ImageRef>() {
                assert_eq!(
                    r.to_string().parse::<ImageRef>().as_ref(),
                    Ok(&r),
                    "round trip"
                );
            }
            cases += 1;
        }
        assert!(cases > 60, "only {cases} cases");
    }

    fn kind(s: &str) -> ReferenceErrorKind {
        s.parse::<ImageRef>().expect_err(s).kind
    }

    #[test]
    fn length_limits() {
        use ReferenceErrorKind as K;
        assert_eq!(
            kind(&format!("x.io/{}", "a".repeat(251))),
            K::NameTooLong(256)
        );
        assert!(format!("x.io/{}", "a".repeat(250))
            .parse::<ImageRef>()
            .is_ok());
        assert_eq!(
            kind(&format!("nginx:{}", "t".repeat(129))),
            K::TagTooLong(129)
        );
        assert!(format!("nginx:{}", "t".repeat(128))
            .parse::<ImageRef>()
            .is_ok());
    }

    #[test]
    fn accessors() {
        let d: Digest = format!("sha256:{HEX64}").parse().unwrap();
        let both: ImageRef = format!("nginx:1.27@{d}").parse().unwrap();
        let by_digest: ImageRef = format!("nginx@{d}").parse().unwrap();
        let by_tag: ImageRef = "nginx:1.27".parse().unwrap();
        assert_eq!(
            by_digest.tag, None,
            "digest-only references get no default tag"
        );
        assert_eq!(both.tag_ref(), Some(by_tag.clone()));
        assert_eq!(both.digest_ref(), Some(by_digest.clone()));
        assert_eq!((by_digest.tag_ref(), by_tag.digest_ref()), (None, None));
        assert_eq!(by_tag.with_digest(d.clone()), both);
        assert_eq!(by_tag.name(), "docker.io/library/nginx");
        let r: ImageRef = "localhost:5000/a/b:t".parse().unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("localhost:5000", "a/b")
        );
        assert_eq!(r.tag.as_deref(), Some("t"));
        assert_eq!((d.algorithm(), d.hex()), (DigestAlgorithm::Sha256, HEX64));
        assert_eq!(Digest::new(DigestAlgorithm::Sha256, HEX64).unwrap(), d);
        assert!(Digest::new(DigestAlgorithm::Sha512, HEX64).is_err());
    }

    #[test]
    fn error_messages_name_the_input() {
        let err = "Foo/Bar".parse::<ImageRef>().unwrap_err();
        let want = r#"invalid image reference "Foo/Bar": repository must be lowercase"#;
        assert_eq!(err.to_string(), want);
        let err = "sha1:abc".parse::<Digest>().unwrap_err();
        let want = r#"invalid digest "sha1:abc": unsupported digest algorithm "sha1" (expected sha256 or sha512)"#;
        assert_eq!(err.to_string(), want);
    }

    #[test]
    fn serde_uses_strings() {
        let r: ImageRef = serde_json::from_str("\"nginx\"").unwrap();
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            "\"docker.io/library/nginx:latest\""
        );
        let d: Digest = serde_json::from_str(&format!("\"sha256:{HEX64}\"")).unwrap();
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            format!("\"sha256:{HEX64}\"")
        );
        let err = serde_json::from_str::<ImageRef>("\"A/B\"")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(r#"invalid image reference "A/B": repository must be lowercase"#));
        assert!(serde_json::from_str::<ImageRef>("42").is_err());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Each error names the part of the reference it is about.
        const PARTS: [&str; 5] = ["reference", "repository", "tag", "digest", "registry"];

        fn check(input: &str) -> Result<(), TestCaseError> {
            match input.parse::<ImageRef>() {
                Ok(r) => {
                    let again = r.to_string().parse::<ImageRef>();
                    prop_assert_eq!(again.as_ref(), Ok(&r), "round trip of {:?}", input);
                }
                Err(e) => {
                    let kind = e.kind.to_string();
                    prop_assert!(
                        PARTS.iter().any(|p| kind.contains(p)),
                        "{:?}: error names no part: {}",
                        input,
                        kind
                    );
                    let quoted = format!("{input:?}");
                    prop_assert!(e.to_string().contains(&quoted), "{} lacks the input", e);
                }
            }
            Ok(())
        }

        fn component() -> impl Strategy<Value = String> {
            "[a-z0-9]{1,6}(([._]|__|-{1,2})[a-z0-9]{1,4})?"
        }

        /// References the grammar accepts, in every shape.
        fn valid() -> impl Strategy<Value = String> {
            let registry = prop_oneof![
                Just(String::new()),
                Just("localhost:5000/".to_string()),
                Just("[::1]:5000/".to_string()),
                "[a-z][a-z0-9-]{0,6}[a-z0-9]\\.(io|com)(:[1-9][0-9]{0,3})?/",
            ];
            let path = prop::collection::vec(component(), 1..4).prop_map(|c| c.join("/"));
            let tag = prop::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}");
            let digest = prop::option::of("[0-9a-f]{64}");
            (registry, path, tag, digest).prop_map(|(r, p, t, d)| {
                let mut s = format!("{r}{p}");
                if let Some(t) = t {
                    s += &format!(":{t}");
                }
                if let Some(d) = d {
                    s += &format!("@sha256:{d}");
                }
                s
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn arbitrary_strings(input in any::<String>()) {
                check(&input)?;
            }

            #[test]
            fn reference_alphabet(input in "[a-zA-Z0-9./:@_\\[\\]-]{0,80}") {
                check(&input)?;
            }

            #[test]
            fn valid_references_parse(input in valid()) {
                let parsed = input.parse::<ImageRef>();
                prop_assert!(parsed.is_ok(), "{:?}: {:?}", input, parsed);
                check(&input)?;
            }

            #[test]
            fn mutated_references(input in valid(), at in any::<usize>(), c in any::<char>(), how in 0u8..3) {
                let mut chars: Vec<char> = input.chars().collect();
                let at = at % (chars.len() + 1);
                match how {
                    0 if at < chars.len() => chars[at] = c,
                    1 => chars.insert(at, c),
                    _ if at < chars.len() => {
                        chars.remove(at);
                    }
                    _ => chars.truncate(at),
                }
                check(&chars.into_iter().collect::<String>())?;
            }

            #[test]
            fn bare_image_ids(input in "[0-9a-f]{64}") {
                check(&input)?;
            }

            #[test]
            fn arbitrary_digests(input in "(sha256|sha512|md5|)[:]?[0-9a-fA-F]{0,130}") {
                match input.parse::<Digest>() {
                    Ok(d) => prop_assert_eq!(d.to_string(), input),
                    Err(e) => prop_assert!(e.to_string().contains("digest"), "{}", e),
                }
            }
        }
    }
}
