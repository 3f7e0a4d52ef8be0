//! Image list entries, one grammar for top-level `images:` and for
//! `windows[].images`: either a plain reference (`- nginx:1.27`) or a
//! mapping `{image: nginx:1.27, pin: false}`.
//!
//! An entry's `pin` is optional. In `images:` it defaults to `true`; in a
//! window it defaults to the window's own `pin` (itself `true` unless set),
//! so `pin` on an entry overrides its window for that one image.

use std::fmt;

use serde::de::value::MapAccessDeserializer;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use super::ImageRef;

/// What an image list entry may be, in the words errors use.
pub const ENTRY_EXPECTED: &str = "an image reference or {image, pin}";

/// One entry of an image list as written: the pin is only known once the
/// list's default is applied (see [`ImageItem::resolve`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageItem {
    pub image: ImageRef,
    /// `None` when the entry does not say: the list's default applies.
    pub pin: Option<bool>,
}

/// An image to keep present on the node, with its pin decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageEntry {
    pub image: ImageRef,
    /// Pin in containerd so the kubelet's image GC leaves it alone.
    pub pin: bool,
}

impl ImageEntry {
    /// A pinned entry for `image`.
    pub fn new(image: ImageRef) -> Self {
        Self { image, pin: true }
    }
}

impl ImageItem {
    /// The entry with `default_pin` where it does not set `pin`.
    pub fn resolve(&self, default_pin: bool) -> ImageEntry {
        ImageEntry {
            image: self.image.clone(),
            pin: self.pin.unwrap_or(default_pin),
        }
    }
}

impl From<ImageRef> for ImageItem {
    fn from(image: ImageRef) -> Self {
        Self { image, pin: None }
    }
}

/// The mapping form; unknown keys are errors.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with `image` and optional `pin`"
)]
struct ImageMap {
    image: ImageRef,
    #[serde(default)]
    pin: Option<bool>,
}

impl<'de> Deserialize<'de> for ImageItem {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = ImageItem;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(ENTRY_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ImageItem, E> {
                v.parse::<ImageRef>()
                    .map(ImageItem::from)
                    .map_err(E::custom)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<ImageItem, A::Error> {
                let m = ImageMap::deserialize(MapAccessDeserializer::new(map))?;
                Ok(ImageItem {
                    image: m.image,
                    pin: m.pin,
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A plain reference when the entry leaves `pin` to its list, else the mapping.
impl Serialize for ImageItem {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.pin {
            None => self.image.serialize(serializer),
            Some(pin) => ImageEntry {
                image: self.image.clone(),
                pin,
            }
            .serialize(serializer),
        }
    }
}

/// In top-level `images:`, an entry without `pin` is pinned.
impl<'de> Deserialize<'de> for ImageEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        ImageItem::deserialize(deserializer).map(|item| item.resolve(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(yaml: &str) -> Vec<ImageItem> {
        serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
    }

    #[test]
    fn both_forms_parse_and_round_trip() {
        let got =
            items("[\"127.0.0.1:5000/eval/base:1\", {image: nginx, pin: false}, {image: redis}]");
        let pins: Vec<Option<bool>> = got.iter().map(|i| i.pin).collect();
        assert_eq!(pins, [None, Some(false), None]);
        assert_eq!(got[0].image.to_string(), "127.0.0.1:5000/eval/base:1");
        assert_eq!(got[1].image.to_string(), "docker.io/library/nginx:latest");
        let back = serde_yaml_ng::to_string(&got).unwrap();
        assert_eq!(items(&back), got);
        assert!(back.starts_with("- 127.0.0.1:5000/eval/base:1\n"), "{back}");
        let resolved: Vec<bool> = got.iter().map(|i| i.resolve(false).pin).collect();
        assert_eq!(resolved, [false, false, false]);
        let resolved: Vec<bool> = got.iter().map(|i| i.resolve(true).pin).collect();
        assert_eq!(resolved, [true, false, true]);
    }

    #[test]
    fn entries_default_to_pinned() {
        let got: Vec<ImageEntry> =
            serde_yaml_ng::from_str("[nginx, {image: redis, pin: false}]").unwrap();
        assert_eq!(got.iter().map(|e| e.pin).collect::<Vec<_>>(), [true, false]);
    }
}
