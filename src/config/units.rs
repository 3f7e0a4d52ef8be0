//! Scalar values written as short strings in the configuration: byte sizes
//! ("500MB", "1.5GiB", "50Mi"), the disk floor ("15%" or "20GiB") and the
//! platform images are pulled for ("linux/amd64").
//!
//! Units: plain bytes (`1024`, `1024B`); decimal `k`/`kB`/`K`/`KB`, `M`/`MB`,
//! `G`/`GB`, `T`/`TB`, `P`/`PB`, `E`/`EB` (powers of 1000, as in Kubernetes
//! quantities); binary `Ki`/`KiB`, `Mi`/`MiB`, … `Ei`/`EiB` (powers of 1024).
//! Fractions are allowed and rounded down to whole bytes. Rates (the pacing
//! bandwidth) are bytes per second and may carry an optional `/s` suffix,
//! e.g. `100MiB` or `100MiB/s`; plain sizes reject `/s`.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("invalid byte size {input:?}: {reason}")]
    ByteSize { input: String, reason: String },
    #[error("invalid percentage {input:?}: {reason}")]
    Percent { input: String, reason: String },
}

const KI: u64 = 1024;
const K: u64 = 1000;
/// Suffixes with their multipliers, largest first (Display picks the first exact one).
const UNITS: &[(&str, u64)] = &[
    ("EiB", KI.pow(6)),
    ("EB", K.pow(6)),
    ("PiB", KI.pow(5)),
    ("PB", K.pow(5)),
    ("TiB", KI.pow(4)),
    ("TB", K.pow(4)),
    ("GiB", KI.pow(3)),
    ("GB", K.pow(3)),
    ("MiB", KI.pow(2)),
    ("MB", K.pow(2)),
    ("KiB", KI),
    ("kB", K),
];

fn multiplier(unit: &str) -> Option<u64> {
    let unit = unit.strip_suffix('B').unwrap_or(unit);
    let exp = |prefix: char| "kMGTPE".find(prefix).map(|i| i as u32 + 1);
    let mut chars = unit.chars();
    match (chars.next(), chars.next(), chars.next()) {
        (None, _, _) => Some(1),
        (Some('K'), None, _) => Some(K),
        (Some('K'), Some('i'), None) => Some(KI),
        (Some('k'), Some('i'), None) => None,
        (Some(p), None, _) => exp(p).map(|e| K.pow(e)),
        (Some(p), Some('i'), None) => exp(p).map(|e| KI.pow(e)),
        _ => None,
    }
}

/// A number of bytes. `Display` picks the largest unit that divides exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const ZERO: ByteSize = ByteSize(0);

    pub const fn as_u64(self) -> u64 {
        self.0
    }

    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Parses a per-second rate: a byte size with an optional `/s` suffix.
    pub fn parse_rate(s: &str) -> Result<ByteSize, UnitError> {
        let trimmed = s.trim();
        let size = trimmed.strip_suffix("/s").unwrap_or(trimmed);
        parse_bytes(size).map_err(|reason| UnitError::ByteSize {
            input: s.to_owned(),
            reason,
        })
    }
}

fn parse_bytes(s: &str) -> Result<ByteSize, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty".into());
    }
    if s.starts_with('-') {
        return Err("must not be negative".into());
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = (&s[..split], s[split..].trim_start());
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') {
        return Err("expected a number followed by an optional unit such as MB or GiB".into());
    }
    if unit.ends_with("/s") {
        return Err("a size takes no \"/s\"".into());
    }
    let mult = multiplier(unit).ok_or_else(|| {
        format!("unknown unit {unit:?}; use B, kB, MB, GB, TB, KiB, MiB, GiB, TiB (or k, M, G, T, Ki, Mi, Gi, Ti)")
    })?;
    let too_large = || "too large".to_string();
    let int: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| too_large())?
    };
    // Only the first 18 fractional digits matter for a u64 result; drop the rest.
    let frac = &frac[..frac.len().min(18)];
    let frac_value: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| too_large())?
    };
    let scale = 10u128.pow(frac.len() as u32);
    let bytes = int
        .checked_mul(u128::from(mult))
        .and_then(|whole| whole.checked_add(frac_value * u128::from(mult) / scale))
        .ok_or_else(too_large)?;
    u64::try_from(bytes).map(ByteSize).map_err(|_| too_large())
}

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_bytes(s).map_err(|reason| UnitError::ByteSize {
            input: s.to_owned(),
            reason,
        })
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n == 0 {
            return f.write_str("0");
        }
        match UNITS.iter().find(|(_, m)| n % m == 0) {
            Some((unit, m)) => write!(f, "{}{unit}", n / m),
            None => write!(f, "{n}B"),
        }
    }
}

impl Serialize for ByteSize {
    /// A string with a unit, except zero, which stays a plain number.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            0 => serializer.serialize_u64(0),
            _ => serializer.collect_str(self),
        }
    }
}

/// Accepts an unsigned integer (bytes) or a string with a unit.
struct ByteSizeVisitor {
    rate: bool,
}

impl de::Visitor<'_> for ByteSizeVisitor {
    type Value = ByteSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rate {
            f.write_str("bytes per second such as 0 (unlimited), \"50MiB\" or \"100MB/s\"")
        } else {
            f.write_str("a byte size such as 1024, \"500MB\" or \"1.5GiB\"")
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
        Ok(ByteSize(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
        u64::try_from(v)
            .map(ByteSize)
            .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
        let parsed = if self.rate {
            ByteSize::parse_rate(v)
        } else {
            v.parse()
        };
        parsed.map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ByteSizeVisitor { rate: false })
    }
}

/// `#[serde(with = "units::rate")]`: a [`ByteSize`] per second that also accepts `/s`.
pub mod rate {
    use super::{ByteSize, ByteSizeVisitor};
    use serde::{Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(value: &ByteSize, serializer: S) -> Result<S::Ok, S::Error> {
        value.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ByteSize, D::Error> {
        deserializer.deserialize_any(ByteSizeVisitor { rate: true })
    }
}

/// Free space to keep on the containerd filesystem: absolute bytes or a
/// percentage of its size. Pulls stop while free space is below the floor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DiskFloor {
    Bytes(u64),
    Percent(f64),
}

impl Default for DiskFloor {
    fn default() -> Self {
        DiskFloor::Percent(10.0)
    }
}

impl DiskFloor {
    /// Bytes that must stay free on a filesystem of `total` bytes (rounded up).
    pub fn min_free_bytes(&self, total: u64) -> u64 {
        match *self {
            DiskFloor::Bytes(bytes) => bytes,
            DiskFloor::Percent(pct) => {
                let pct = pct.clamp(0.0, 100.0);
                // Float math is exact enough: floors are coarse by nature.
                ((total as f64) * pct / 100.0).ceil().min(total as f64) as u64
            }
        }
    }
}

impl FromStr for DiskFloor {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some(number) = s.trim().strip_suffix('%') else {
            return s.parse::<ByteSize>().map(|b| DiskFloor::Bytes(b.0));
        };
        let error = |reason: &str| UnitError::Percent {
            input: s.to_owned(),
            reason: reason.to_owned(),
        };
        let number = number.trim_end();
        // Digits with at most one '.', so "inf", "NaN", "-5" and "1e3" are refused.
        let shape_ok = !number.is_empty()
            && number.chars().any(|c| c.is_ascii_digit())
            && number.chars().all(|c| c.is_ascii_digit() || c == '.')
            && number.matches('.').count() <= 1;
        if !shape_ok {
            return Err(error("expected a non-negative number before '%'"));
        }
        let value = number
            .parse::<f64>()
            .map_err(|_| error("expected a non-negative number before '%'"))?;
        if value >= 100.0 {
            return Err(error("must be below 100%"));
        }
        Ok(DiskFloor::Percent(value))
    }
}

impl fmt::Display for DiskFloor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskFloor::Bytes(bytes) => ByteSize(*bytes).fmt(f),
            DiskFloor::Percent(pct) => write!(f, "{pct}%"),
        }
    }
}

impl Serialize for DiskFloor {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DiskFloor {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = DiskFloor;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a percentage such as \"10%\" or a byte size such as \"20GiB\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DiskFloor, E> {
                Ok(DiskFloor::Bytes(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DiskFloor, E> {
                u64::try_from(v)
                    .map(DiskFloor::Bytes)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DiskFloor, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// An OCI platform such as `linux/amd64` or `linux/arm/v7`, normalized like
/// containerd (`x86_64` → `amd64`, `aarch64` → `arm64`, `arm64/v8` → `arm64`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid platform {0:?}: expected os/arch[/variant] such as \"linux/amd64\" or \"linux/arm/v7\"")]
pub struct PlatformError(pub String);

impl Platform {
    /// The platform this process runs on.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "loongarch64" => "loong64",
            other => other,
        };
        normalize(std::env::consts::OS, arch, None)
    }
}

fn normalize(os: &str, arch: &str, variant: Option<&str>) -> Platform {
    let mut arch = arch.to_ascii_lowercase();
    let mut variant = variant.map(str::to_ascii_lowercase);
    match arch.as_str() {
        "x86_64" | "x86-64" | "amd64" => {
            arch = "amd64".into();
            if variant.as_deref() == Some("v1") {
                variant = None;
            }
        }
        "aarch64" | "arm64" => {
            arch = "arm64".into();
            if matches!(variant.as_deref(), Some("8" | "v8" | "v8.0")) {
                variant = None;
            }
        }
        "i386" | "x86" => arch = "386".into(),
        "armhf" => (arch, variant) = ("arm".into(), Some("v7".into())),
        "armel" => (arch, variant) = ("arm".into(), Some("v6".into())),
        "arm" => {
            variant = Some(match variant.as_deref() {
                None => "v7".into(),
                Some(v @ ("5" | "6" | "7" | "8")) => format!("v{v}"),
                Some(v) => v.to_owned(),
            })
        }
        _ => {}
    }
    Platform {
        os: os.to_ascii_lowercase(),
        architecture: arch,
        variant,
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        };
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if valid(os) && valid(arch) => Ok(normalize(os, arch, None)),
            [os, arch, variant] if valid(os) && valid(arch) && valid(variant) => {
                Ok(normalize(os, arch, Some(variant)))
            }
            _ => Err(PlatformError(s.to_owned())),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(variant) => write!(f, "/{variant}"),
            None => Ok(()),
        }
    }
}

impl Serialize for Platform {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Platform {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &str) -> u64 {
        match s.parse::<ByteSize>() {
            Ok(b) => b.0,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn parses_sizes() {
        let cases = [
            ("0", 0),
            ("1024", 1024),
            ("1024B", 1024),
            ("500MB", 500_000_000),
            ("500 MB", 500_000_000),
            ("1.5GiB", 1_610_612_736),
            ("50Mi", 52_428_800),
            ("10G", 10_000_000_000),
            ("1k", 1000),
            ("1K", 1000),
            ("1KB", 1000),
            ("1kB", 1000),
            ("1Ki", 1024),
            ("2TiB", 2 << 40),
            ("1.5", 1),
            (".5KiB", 512),
            ("0.1KiB", 102),
            ("1.000000000000000000001GB", 1_000_000_000),
            ("15EiB", 15 << 60),
        ];
        for (input, want) in cases {
            assert_eq!(bytes(input), want, "{input}");
        }
        assert_eq!(bytes(&u64::MAX.to_string()), u64::MAX);
    }

    #[test]
    fn rejects_bad_sizes() {
        for input in [
            "", " ", "MB", "-1", "1..5GB", "1.2.3", "10 gigs", "1mb", "1Gb", "5XiB", "1kiB", "1e3",
            "100MiB/s",
        ] {
            assert!(input.parse::<ByteSize>().is_err(), "{input:?} parsed");
        }
        let err = "16EiB".parse::<ByteSize>().unwrap_err();
        assert_eq!(err.to_string(), r#"invalid byte size "16EiB": too large"#);
        assert_eq!(
            "100MiB/s".parse::<ByteSize>().unwrap_err().to_string(),
            r#"invalid byte size "100MiB/s": a size takes no "/s""#
        );
        assert!("18446744073709551616".parse::<ByteSize>().is_err());
        let err = "3 parsecs".parse::<ByteSize>().unwrap_err().to_string();
        assert!(err.contains("unknown unit \"parsecs\""), "{err}");
    }

    #[test]
    fn rates_accept_per_second_suffix() {
        assert_eq!(
            ByteSize::parse_rate("100MiB/s").unwrap(),
            ByteSize(100 << 20)
        );
        assert_eq!(ByteSize::parse_rate("100MiB").unwrap(), ByteSize(100 << 20));
        assert_eq!(ByteSize::parse_rate("0").unwrap(), ByteSize::ZERO);
        assert!(ByteSize::parse_rate("/s").is_err());
        assert!(ByteSize::parse_rate("1MiB/s/s").is_err());
    }

    #[test]
    fn display_round_trips() {
        let cases = [
            (0, "0"),
            (1, "1B"),
            (1000, "1kB"),
            (1024, "1KiB"),
            (1536, "1536B"),
            (500_000_000, "500MB"),
            (1_610_612_736, "1536MiB"),
            (10 << 30, "10GiB"),
            (3 * 1000u64.pow(4), "3TB"),
            (u64::MAX, "18446744073709551615B"),
        ];
        for (n, want) in cases {
            assert_eq!(ByteSize(n).to_string(), want);
            assert_eq!(bytes(want), n);
        }
        for n in [7u64, 4096, 123_456_789, 1 << 50, 999_999_999_999] {
            assert_eq!(bytes(&ByteSize(n).to_string()), n);
        }
    }

    #[test]
    fn disk_floor_parses_and_displays() {
        assert_eq!(
            "15%".parse::<DiskFloor>().unwrap(),
            DiskFloor::Percent(15.0)
        );
        assert_eq!(
            "12.5 %".parse::<DiskFloor>().unwrap(),
            DiskFloor::Percent(12.5)
        );
        assert_eq!(
            "20GiB".parse::<DiskFloor>().unwrap(),
            DiskFloor::Bytes(20 << 30)
        );
        assert_eq!("0".parse::<DiskFloor>().unwrap(), DiskFloor::Bytes(0));
        for input in ["%", "-5%", "inf%", "NaN%", "1e2%", "1.2.3%", "x%", "ten"] {
            assert!(input.parse::<DiskFloor>().is_err(), "{input:?} parsed");
        }
        assert_eq!(
            "-5%".parse::<DiskFloor>().unwrap_err().to_string(),
            r#"invalid percentage "-5%": expected a non-negative number before '%'"#
        );
        for text in ["15%", "12.5%", "0%", "20GiB", "0", "1536B"] {
            assert_eq!(text.parse::<DiskFloor>().unwrap().to_string(), text);
        }
        assert_eq!(DiskFloor::default(), DiskFloor::Percent(10.0));
    }

    #[test]
    fn disk_floor_min_free() {
        assert_eq!(DiskFloor::Percent(10.0).min_free_bytes(1000), 100);
        assert_eq!(DiskFloor::Percent(10.0).min_free_bytes(1001), 101);
        assert_eq!(DiskFloor::Percent(0.0).min_free_bytes(1 << 40), 0);
        assert_eq!(DiskFloor::Percent(150.0).min_free_bytes(10), 10);
        assert_eq!(DiskFloor::Bytes(5).min_free_bytes(1), 5);
    }

    #[test]
    fn serde_accepts_strings_and_integers() {
        let b: ByteSize = serde_json::from_str("1048576").unwrap();
        assert_eq!(b, ByteSize(1 << 20));
        let b: ByteSize = serde_json::from_str("\"1MiB\"").unwrap();
        assert_eq!(serde_json::to_string(&b).unwrap(), "\"1MiB\"");
        assert_eq!(serde_json::to_string(&ByteSize::ZERO).unwrap(), "0");
        assert!(serde_json::from_str::<ByteSize>("-1").is_err());
        assert!(serde_json::from_str::<ByteSize>("1.5").is_err());
        assert!(serde_json::from_str::<ByteSize>("\"1MiB/s\"").is_err());
        let f: DiskFloor = serde_json::from_str("\"15%\"").unwrap();
        assert_eq!(serde_json::to_string(&f).unwrap(), "\"15%\"");
        assert_eq!(
            serde_json::from_str::<DiskFloor>("4096").unwrap(),
            DiskFloor::Bytes(4096)
        );
        assert!(serde_json::from_str::<DiskFloor>("-4096").is_err());
        assert!(serde_json::from_str::<DiskFloor>("0.5").is_err());

        #[derive(Deserialize)]
        struct Rate {
            #[serde(with = "rate")]
            bw: ByteSize,
        }
        let r: Rate = serde_json::from_str(r#"{"bw": "10MB/s"}"#).unwrap();
        assert_eq!(r.bw, ByteSize(10_000_000));
        let r: Rate = serde_json::from_str(r#"{"bw": 0}"#).unwrap();
        assert_eq!(r.bw, ByteSize::ZERO);
    }

    #[test]
    fn platforms_parse_and_normalize() {
        let cases = [
            ("linux/amd64", "linux/amd64"),
            ("linux/x86_64", "linux/amd64"),
            ("Linux/AMD64/v1", "linux/amd64"),
            ("linux/amd64/v3", "linux/amd64/v3"),
            ("linux/aarch64", "linux/arm64"),
            ("linux/arm64/v8", "linux/arm64"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/arm/6", "linux/arm/v6"),
            ("linux/armhf", "linux/arm/v7"),
            ("linux/i386", "linux/386"),
            ("windows/amd64", "windows/amd64"),
        ];
        for (input, want) in cases {
            assert_eq!(
                input.parse::<Platform>().unwrap().to_string(),
                want,
                "{input}"
            );
        }
        let bad_platforms = [
            "linux",
            "linux/",
            "/amd64",
            "linux/amd64/v8/x",
            "linux/am d64",
            "",
        ];
        for bad in bad_platforms {
            assert!(bad.parse::<Platform>().is_err(), "{bad:?}");
        }
        let host = Platform::host();
        assert!(!host.os.is_empty() && !host.architecture.is_empty());
        assert_eq!(host.to_string().parse::<Platform>().unwrap(), host);
        let p: Platform = serde_json::from_str("\"linux/aarch64\"").unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"linux/arm64\"");
    }
}
