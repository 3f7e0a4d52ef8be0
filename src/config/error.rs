//! Configuration errors: `<file>: <field path>: <message>`, with serde's
//! messages rewritten in the words of a YAML file's author (no Rust type
//! names such as `struct ImageEntry` or `usize`).

use std::path::PathBuf;

/// What went wrong with a configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigErrorKind {
    /// The file could not be read.
    Io,
    /// Broken YAML, or a value of the wrong shape, type or format.
    Parse,
    /// Well-formed but semantically invalid (see [`AgentConfig::validate`]).
    Invalid,
}

/// A 1-based position in the YAML text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// Displays as `<file>: <field path>: <message>`; the file is left out when
/// parsing a string, the field when the error is not about one field (then
/// the line and column are shown instead, when known).
#[derive(Debug, thiserror::Error)]
#[error("{}", render(self))]
pub struct ConfigError {
    pub kind: ConfigErrorKind,
    pub file: Option<PathBuf>,
    /// YAML path such as `pacing.maxConcurrentPulls` or `images[1].image`; empty for the whole file.
    pub field: String,
    pub message: String,
    pub position: Option<Position>,
    #[source]
    pub source: Option<std::io::Error>,
}

fn render(e: &ConfigError) -> String {
    let mut out = String::new();
    if let Some(file) = &e.file {
        out.push_str(&format!("{}: ", file.display()));
    }
    match (&e.field, e.position) {
        (field, _) if !field.is_empty() => out.push_str(&format!("{field}: ")),
        (_, Some(p)) => out.push_str(&format!("line {}, column {}: ", p.line, p.column)),
        _ => {}
    }
    out.push_str(&e.message);
    out
}

impl ConfigError {
    /// A validation error about `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: ConfigErrorKind::Invalid,
            file: None,
            field: field.into(),
            message: message.into(),
            position: None,
            source: None,
        }
    }

    /// Gives an error about the whole text a position in it: the start of
    /// a second document when there is one, else the first line.
    pub(super) fn located_in(mut self, text: &str) -> Self {
        if !self.field.is_empty() || self.position.is_some() {
            return self;
        }
        let line = second_document(text).unwrap_or(1);
        self.position = Some(Position { line, column: 1 });
        if self.message.contains("more than one document") {
            self.message = "a second YAML document starts here; the config is one document".into();
        }
        self
    }

    /// Attaches the file the configuration came from.
    pub fn with_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.file = Some(file.into());
        self
    }

    pub(super) fn from_yaml(err: serde_path_to_error::Error<serde_yaml_ng::Error>) -> Self {
        // "?" marks a segment serde_path_to_error could not name (e.g. a YAML
        // syntax error found before any field was reached): drop those.
        let path = err.path().to_string();
        let mut field = path.trim_end_matches(".?").to_owned();
        if field == "." || field == "?" {
            field.clear();
        }
        let inner = err.into_inner();
        let position = inner.location().map(|l| Position {
            line: l.line(),
            column: l.column(),
        });
        // serde_yaml_ng decorates messages with its own path and position; we
        // report both separately, so strip them.
        let mut message = inner.to_string();
        if let Some(p) = position {
            message = message.replacen(&format!(" at line {} column {}", p.line, p.column), "", 1);
        }
        // serde_yaml_ng's own path is the field path or a parent of it.
        let prefixes = field
            .match_indices(['.', '['])
            .map(|(i, _)| i)
            .chain([field.len()]);
        for end in prefixes.collect::<Vec<_>>().into_iter().rev() {
            if let Some(rest) = message.strip_prefix(&format!("{}: ", &field[..end])) {
                message = rest.to_owned();
                break;
            }
        }
        // "unknown field `x`, expected …" → field path ends in `x`.
        if let Some(rest) = message.strip_prefix("unknown field `") {
            if let Some((name, tail)) = rest.split_once('`') {
                if !(field == name || field.ends_with(&format!(".{name}"))) {
                    field = if field.is_empty() {
                        name.to_owned()
                    } else {
                        format!("{field}.{name}")
                    };
                }
                message = format!("unknown field{tail}");
            }
        }
        Self {
            kind: ConfigErrorKind::Parse,
            file: None,
            field,
            message: in_user_words(&message),
            position,
            source: None,
        }
    }
}

/// Rewrites serde's `invalid type: X, expected Y` (and `invalid value`,
/// `invalid length`, `unknown variant`) as `expected Y, got X` in YAML
/// terms; other messages pass unchanged.
pub(crate) fn in_user_words(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            if let Some((got, want)) = split_expected(rest) {
                return format!("expected {}, got {}", expected(want), unexpected(got));
            }
        }
    }
    if let Some(rest) = message.strip_prefix("invalid length ") {
        if let Some((n, want)) = split_expected(rest) {
            let entries = if n == "1" { "entry" } else { "entries" };
            return format!("expected {}, got {n} {entries}", expected(want));
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        return format!("unknown value {rest}");
    }
    yaml_syntax(message)
}

/// The 1-based line where a second YAML document starts (`---` after
/// content or after a first `---`), if any.
fn second_document(text: &str) -> Option<usize> {
    let mut started = false;
    for (i, line) in text.lines().enumerate() {
        let marker = line
            .strip_prefix("---")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']));
        let content = !line.trim().is_empty() && !line.trim_start().starts_with('#');
        match (marker, started) {
            (true, true) => return Some(i + 1),
            (true, false) => started = true,
            (false, _) if content => started = true,
            _ => {}
        }
    }
    None
}

/// The YAML scanner's messages (`block sequence entries are not allowed in
/// this context`) in the words the rest of the errors use: lists and
/// mappings. Other messages, which may quote the user's values, pass.
fn yaml_syntax(message: &str) -> String {
    let syntax = message.contains(" in this context")
        || message.starts_with("while ")
        || message.starts_with("did not find ");
    if !syntax {
        return message.to_owned();
    }
    message
        .replace("block sequence entries", "list entries (\"- \")")
        .replace("block sequence", "list")
        .replace("flow sequence", "list")
        .replace("sequence", "list")
        .replace("block mapping", "mapping")
        .replace("flow mapping", "mapping")
}

/// `X, expected Y` → (X, Y). X may itself contain commas (a quoted string).
fn split_expected(rest: &str) -> Option<(&str, &str)> {
    let i = rest.rfind(", expected ")?;
    Some((&rest[..i], &rest[i + ", expected ".len()..]))
}

/// serde's `Unexpected` display → YAML words.
fn unexpected(got: &str) -> String {
    let quoted = |s: &str| {
        s.strip_prefix('`')
            .and_then(|s| s.strip_suffix('`'))
            .map(str::to_owned)
    };
    let (kind, value) = got.split_once(' ').unwrap_or((got, ""));
    // Huge integers read as u128/i128 say so: `123` as u128.
    let value = value.split(" as ").next().unwrap_or(value);
    match kind {
        "integer" | "floating" => {
            let v = value.strip_prefix("point ").unwrap_or(value);
            match quoted(v) {
                Some(n) => format!("the number {n}"),
                None => "a number".into(),
            }
        }
        "boolean" => quoted(value).unwrap_or_else(|| "a boolean".into()),
        "string" => format!("the string {value}"),
        "char" => match quoted(value) {
            Some(c) => format!("the string \"{c}\""),
            None => "a string".into(),
        },
        "sequence" => "a list".into(),
        "map" => "a mapping".into(),
        "unit" if value == "value" => "null".into(),
        "byte" | "bytes" => "binary data".into(),
        "Option" => "a value".into(),
        "enum" | "unit" | "newtype" | "tuple" | "struct" => "a tagged value".into(),
        _ => got.to_owned(),
    }
}

/// What serde says it expected → YAML words. Messages written for users
/// (`a duration`, `an image reference such as …`) pass through; Rust
/// types are translated.
fn expected(want: &str) -> String {
    if let Some((min, max)) = integer_range(want) {
        return format!("a whole number from {min} to {max}");
    }
    let words = match want {
        "usize" | "u64" | "u128" => "a whole number, 0 or more",
        "isize" | "i64" | "i128" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" | "bool" => "true or false",
        "a sequence" => "a list",
        "a map" => "a mapping",
        "path string" | "a path" => "a path",
        "a string" | "a borrowed string" | "string" => "a string",
        "unit" => "null",
        "option" => "a value",
        "a duration" => "a duration such as \"30s\", \"5m\" or \"1h 30m\"",
        // `tuple struct X with 3 elements`, `tuple of size 3`, `struct X with 2 elements`.
        w if w.starts_with("tuple") || w.ends_with(" elements") => {
            let n = w.split_whitespace().find(|t| t.parse::<usize>().is_ok());
            return match n {
                Some(n) => format!("a list of {n} entries"),
                None => "a list".into(),
            };
        }
        w if w.starts_with("struct ") => "a mapping",
        w if w.starts_with("enum ") => "one of the documented values",
        w => w,
    };
    words.to_owned()
}

/// Rust type names and serde jargon a message shows outside quotes and
/// backticks (which hold the user's own values and keys). For tests.
/// The bounds of a narrow Rust integer type named by serde.
fn integer_range(name: &str) -> Option<(i64, u64)> {
    Some(match name {
        "u8" => (0, u8::MAX.into()),
        "u16" => (0, u16::MAX.into()),
        "u32" => (0, u32::MAX.into()),
        "i8" => (i8::MIN.into(), i8::MAX as u64),
        "i16" => (i16::MIN.into(), i16::MAX as u64),
        "i32" => (i32::MIN.into(), i32::MAX as u64),
        _ => return None,
    })
}

#[cfg(test)]
pub(crate) fn rust_words(message: &str) -> Vec<String> {
    const BANNED: &[&str] = &[
        "struct", "enum", "usize", "isize", "u8", "u16", "u32", "u64", "u128", "i8", "i16", "i32",
        "i64", "i128", "f32", "f64", "bool", "str", "String", "Vec", "Option", "PathBuf",
        "BTreeMap", "HashMap", "sequence", "map",
    ];
    const UNITS: &[&str] = &["KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut plain = String::new();
    let mut inside: Option<char> = None;
    let mut escaped = false;
    for c in message.chars() {
        match (inside, c) {
            // Quoted values are shown escaped: `\"` does not end them.
            (Some(_), _) if escaped => escaped = false,
            (Some('"'), '\\') => escaped = true,
            (Some(q), c) if c == q => inside = None,
            (Some(_), _) => {}
            (None, '"' | '`') => inside = Some(c),
            (None, c) => plain.push(c),
        }
    }
    let pascal = |w: &str| {
        let mut chars = w.chars();
        chars.next().is_some_and(|c| c.is_ascii_uppercase())
            && w.chars().skip(1).any(|c| c.is_ascii_lowercase())
            && w.chars().skip(1).any(|c| c.is_ascii_uppercase())
            && !UNITS.contains(&w)
    };
    let mut found: Vec<String> = plain
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .filter(|w| BANNED.contains(w) || pascal(w))
        .map(str::to_owned)
        .collect();
    found.extend(
        ["unit value", "invalid type", "invalid value"]
            .iter()
            .filter(|p| plain.contains(*p))
            .map(|p| p.to_string()),
    );
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_in_user_words() {
        let cases = [
            ("invalid type: integer `5`, expected struct ImageEntry", "expected a mapping, got the number 5"),
            ("invalid type: integer `-1`, expected usize", "expected a whole number, 0 or more, got the number -1"),
            ("invalid type: integer `99999999999999999999999` as u128, expected usize", "expected a whole number, 0 or more, got the number 99999999999999999999999"),
            ("invalid type: floating point `1.5`, expected u32", "expected a whole number from 0 to 4294967295, got the number 1.5"),
            ("invalid value: integer `99999999999`, expected i32", "expected a whole number from -2147483648 to 2147483647, got the number 99999999999"),
            ("invalid type: string \"x, y\", expected f64", "expected a number, got the string \"x, y\""),
            ("invalid type: boolean `true`, expected a sequence", "expected a list, got true"),
            ("invalid type: unit value, expected a map", "expected a mapping, got null"),
            ("invalid type: sequence, expected path string", "expected a path, got a list"),
            ("invalid type: map, expected a boolean", "expected true or false, got a mapping"),
            ("invalid value: string \"soon\", expected a duration", "expected a duration such as \"30s\", \"5m\" or \"1h 30m\", got the string \"soon\""),
            ("invalid type: integer `3`, expected enum Policy", "expected one of the documented values, got the number 3"),
            ("invalid length 2, expected tuple struct Pair with 3 elements", "expected a list of 3 entries, got 2 entries"),
            ("invalid type: unit variant, expected a string", "expected a string, got a tagged value"),
            ("invalid length 1, expected tuple of size 2", "expected a list of 2 entries, got 1 entry"),
            ("missing field `image`", "missing field `image`"),
            ("unknown variant `x`, expected `a` or `b`", "unknown value `x`, expected `a` or `b`"),
        ];
        for (serde, want) in cases {
            assert_eq!(in_user_words(serde), want, "{serde}");
            assert_eq!(rust_words(want), Vec::<String>::new(), "{want}");
        }
    }

    #[test]
    fn rust_words_are_found_outside_quotes() {
        let found = rust_words("invalid type: string \"x\", expected struct ImageEntry");
        assert_eq!(found, ["struct", "ImageEntry", "invalid type"]);
        assert_eq!(rust_words("expected usize"), ["usize"]);
        assert!(rust_words("unknown field `maxConcurrentPulls`, \"MyApp\" 20GiB").is_empty());
    }
}
