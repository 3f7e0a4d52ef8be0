//! Property tests of the config parser: arbitrary YAML-ish text and
//! mutations of the shipped configs never panic, and every error names
//! the field (a path like `windows[0].leadTime`) or the line and column,
//! in words without Rust type names.

use proptest::prelude::*;

use super::error::rust_words;
use super::{AgentConfig, ConfigError, ConfigErrorKind};

/// The configs the project ships, as a user would start from them.
fn shipped() -> Vec<String> {
    let manifest = include_str!("../../daemonset/agent-configmap.yaml");
    let cm: serde_yaml_ng::Value = serde_yaml_ng::from_str(manifest).expect("manifest");
    let configmap = cm["data"]["config.yaml"]
        .as_str()
        .expect("config.yaml")
        .to_string();
    vec![
        include_str!("../../config/agent.example.yaml").to_string(),
        include_str!("../../config/aks-integrations.yaml").to_string(),
        include_str!("../../tests/fixtures/config/valid-full.yaml").to_string(),
        configmap,
    ]
}

/// Checks one error: a field or a position, plain words.
fn check(text: &str, err: &ConfigError) -> Result<(), TestCaseError> {
    let shown = err.to_string();
    prop_assert!(
        !err.field.is_empty() || err.position.is_some(),
        "names neither a field nor a position: {shown}\n--- input:\n{text}"
    );
    if err.kind == ConfigErrorKind::Invalid {
        prop_assert!(
            !err.field.is_empty(),
            "validation error without a field: {shown}"
        );
    }
    prop_assert!(!err.message.trim().is_empty(), "empty message\n{text}");
    // The field path holds the user's own keys; the message must be plain.
    let leaked = rust_words(&err.message);
    prop_assert!(
        leaked.is_empty(),
        "{shown} shows {leaked:?}\n--- input:\n{text}"
    );
    Ok(())
}

fn parse_and_check(text: &str) -> Result<(), TestCaseError> {
    match AgentConfig::from_yaml(text) {
        Ok(cfg) => {
            // What parses also round-trips.
            let again = AgentConfig::from_yaml(&cfg.to_yaml());
            prop_assert!(again.is_ok(), "{:?}\n--- input:\n{text}", again.err());
        }
        Err(err) => check(text, &err)?,
    }
    Ok(())
}

/// Tokens a YAML author might type: keys of every section, scalars of
/// every unit, and YAML punctuation.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("images".to_string()),
        Just("windows".to_string()),
        Just("pacing".to_string()),
        Just("intents".to_string()),
        Just("scheduling".to_string()),
        Just("coordinator".to_string()),
        Just("registry".to_string()),
        Just("runtime".to_string()),
        Just("maxConcurrentPulls".to_string()),
        Just("diskFloor".to_string()),
        Just("bandwidth".to_string()),
        Just("leadTime".to_string()),
        Just("schedule".to_string()),
        Just("duration".to_string()),
        Just("maxDeadline".to_string()),
        Just("name".to_string()),
        Just("nginx".to_string()),
        Just("'0 8 * * *'".to_string()),
        Just("10%".to_string()),
        Just("20GiB".to_string()),
        Just("1h".to_string()),
        Just("-1".to_string()),
        Just("99999999999999999999".to_string()),
        Just("~".to_string()),
        Just("true".to_string()),
        Just(": ".to_string()),
        Just("- ".to_string()),
        Just("\n".to_string()),
        Just("\n  ".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(", ".to_string()),
        Just("&a ".to_string()),
        Just("*a".to_string()),
        Just("!!binary ".to_string()),
        Just("<<: ".to_string()),
        Just("\"".to_string()),
        Just("#".to_string()),
        Just("\t".to_string()),
        "[a-zA-Z0-9_./:@%-]{1,12}",
        any::<char>().prop_map(|c| c.to_string()),
    ]
}

/// One edit of a text, at a char boundary picked by `at` (a fraction).
#[derive(Debug, Clone)]
enum Edit {
    Delete {
        at: f64,
        len: usize,
    },
    Insert {
        at: f64,
        what: String,
    },
    /// Replace the value after the `:` of a line.
    Value {
        line: f64,
        what: String,
    },
    DuplicateLine {
        line: f64,
    },
    /// Change a line's indentation.
    Indent {
        line: f64,
        by: i8,
    },
}

fn edit() -> impl Strategy<Value = Edit> {
    let at = 0.0..1.0f64;
    prop_oneof![
        (at.clone(), 1..40usize).prop_map(|(at, len)| Edit::Delete { at, len }),
        (at.clone(), token()).prop_map(|(at, what)| Edit::Insert { at, what }),
        (at.clone(), token()).prop_map(|(line, what)| Edit::Value { line, what }),
        at.clone().prop_map(|line| Edit::DuplicateLine { line }),
        (at, -4..4i8).prop_map(|(line, by)| Edit::Indent { line, by }),
    ]
}

fn boundary(text: &str, at: f64) -> usize {
    let mut i = ((text.len() as f64) * at) as usize;
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(text: &str, e: &Edit) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let pick = |n: usize, f: f64| ((n as f64) * f) as usize % n.max(1);
    match e {
        Edit::Delete { at, len } => {
            let start = boundary(text, *at);
            let mut end = (start + len).min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}{}", &text[..start], &text[end..])
        }
        Edit::Insert { at, what } => {
            let i = boundary(text, *at);
            format!("{}{what}{}", &text[..i], &text[i..])
        }
        Edit::Value { line, what } if !lines.is_empty() => {
            let i = pick(lines.len(), *line);
            if let Some((key, _)) = lines[i].split_once(':') {
                lines[i] = format!("{key}: {what}");
            }
            lines.join("\n")
        }
        Edit::DuplicateLine { line } if !lines.is_empty() => {
            let i = pick(lines.len(), *line);
            lines.insert(i, lines[i].clone());
            lines.join("\n")
        }
        Edit::Indent { line, by } if !lines.is_empty() => {
            let i = pick(lines.len(), *line);
            lines[i] = match *by {
                by if by >= 0 => format!("{}{}", " ".repeat(by as usize), lines[i]),
                by => {
                    let cut = lines[i].len() - lines[i].trim_start_matches(' ').len();
                    lines[i][cut.min((-by) as usize)..].to_string()
                }
            };
            lines.join("\n")
        }
        _ => text.to_string(),
    }
}

proptest! {
    // Bounded, and no regression files written into the tree.
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(256)
    })]

    #[test]
    fn yamlish_text_never_panics_and_errors_say_where(tokens in prop::collection::vec(token(), 0..40)) {
        parse_and_check(&tokens.concat())?;
    }

    #[test]
    fn mutated_shipped_configs_never_panic_and_errors_say_where(
        which in 0..4usize,
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let mut text = shipped()[which].clone();
        for e in &edits {
            text = apply(&text, e);
        }
        parse_and_check(&text)?;
    }

    /// Values of the wrong kind in every field of a section.
    #[test]
    fn wrong_values_name_their_field(
        section in prop::sample::select(vec!["pacing", "intents", "scheduling", "runtime", "registry"]),
        key in prop::sample::select(vec![
            "maxConcurrentPulls", "maxConcurrentBlobs", "bandwidth", "diskFloor", "retry",
            "maxDeadline", "maxImages", "maxBytes", "safetyFactor", "defaultThroughput",
            "grace", "intentHold", "startJitter", "socket", "namespace", "root", "snapshotter",
            "dockerConfig", "credentialProvider", "hostsDir", "platform",
        ]),
        value in token(),
    ) {
        let text = format!("{section}:\n  {key}: {value}\n");
        if let Err(err) = AgentConfig::from_yaml(&text) {
            check(&text, &err)?;
        }
    }

    /// Windows with arbitrary fields: errors are about `windows[i]…`.
    #[test]
    fn window_errors_name_the_window(
        lead in token(),
        schedule in token(),
        duration in token(),
    ) {
        let text = format!(
            "windows:\n- name: a\n  schedule: {schedule}\n  duration: {duration}\n  leadTime: {lead}\n  images: [nginx]\n"
        );
        if let Err(err) = AgentConfig::from_yaml(&text) {
            check(&text, &err)?;
            if err.kind == ConfigErrorKind::Invalid {
                prop_assert!(err.field.starts_with("windows[0]"), "{err}\n{text}");
            }
        }
    }
}
