//! Every `prewarm` command line the project shows its users must parse:
//! README.md (code blocks, `$ prewarm` console lines, inline code and the
//! synopsis under "## Commands"), the scripts and the manifests' container
//! args. The lines are extracted from the files, never copied here.

use std::path::Path;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};

use super::Cli;

const README: &str = include_str!("../../README.md");

/// Where a command line came from, for failure messages.
#[derive(Debug)]
struct Found {
    origin: String,
    words: Vec<String>,
}

/// Splits one shell command into words: quotes are removed, `$VAR` and
/// `${...}` expansions become `x`, and the command ends at an unquoted
/// `|`, `&`, `;`, `)`, a redirection or a `#` comment.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => word.get_or_insert_default().push(c),
            (_, '$') => {
                // An expansion: $NAME or ${...}.
                if chars.peek() == Some(&'{') {
                    for c in chars.by_ref() {
                        if c == '}' {
                            break;
                        }
                    }
                } else {
                    while chars
                        .peek()
                        .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
                    {
                        chars.next();
                    }
                }
                word.get_or_insert_default().push('x');
            }
            (Some(_), c) => word.get_or_insert_default().push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                word.get_or_insert_default();
            }
            (None, '|' | '&' | ';' | ')' | '<' | '>') => break,
            (None, '#') if word.is_none() => break,
            // `2>file`: a redirection, not a word.
            (None, '0'..='9') if word.is_none() && matches!(chars.peek(), Some('>')) => break,
            (None, c) if c.is_whitespace() => words.extend(word.take()),
            (None, c) => word.get_or_insert_default().push(c),
        }
    }
    words.extend(word);
    words
}

/// Command lines in README code blocks and inline code, except the
/// synopsis block under "## Commands" (see [`synopsis`]). Inline code
/// spans are returned separately: they may name a command without its
/// required arguments (`prewarm pull`).
fn readme_lines(text: &str) -> (Vec<Found>, Vec<Found>) {
    let (mut blocks, mut inline) = (Vec::new(), Vec::new());
    let mut fenced = false;
    let mut section = "";
    for (n, line) in text.lines().enumerate() {
        let origin = format!("README.md:{}", n + 1);
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            if let Some(h) = line.strip_prefix("## ") {
                section = h.trim();
            }
            inline.extend(inline_spans(&origin, line));
            continue;
        }
        if section == "Commands" {
            continue;
        }
        let command = trimmed.strip_prefix("$ ").unwrap_or(trimmed);
        if command.starts_with("prewarm ") {
            blocks.push(Found {
                origin,
                words: shell_words(command),
            });
        }
    }
    (blocks, inline)
}

/// Inline code spans (the odd pieces between backticks) that start with
/// `prewarm `.
fn inline_spans(origin: &str, line: &str) -> Vec<Found> {
    line.split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| span.starts_with("prewarm "))
        .map(|span| Found {
            origin: origin.to_owned(),
            words: shell_words(span),
        })
        .collect()
}

/// Inline code in the `#` comments of a YAML file.
fn comment_spans(name: &str, text: &str) -> Vec<Found> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if let Some((_, comment)) = line.split_once('#') {
            out.extend(inline_spans(&format!("{name}:{}", n + 1), comment));
        }
    }
    out
}

/// The synopsis block under "## Commands": one entry per `prewarm ...`
/// line, joined with its indented continuation lines.
fn synopsis(text: &str) -> Vec<(String, String)> {
    let mut lines = text.lines().enumerate();
    lines
        .by_ref()
        .find(|(_, l)| *l == "## Commands")
        .expect("README has ## Commands");
    lines
        .by_ref()
        .find(|(_, l)| l.starts_with("```"))
        .expect("a code block under ## Commands");
    let mut entries: Vec<(String, String)> = Vec::new();
    for (n, line) in lines.take_while(|(_, l)| !l.starts_with("```")) {
        if line.starts_with("prewarm ") {
            entries.push((format!("README.md:{}", n + 1), line.to_owned()));
        } else if line.starts_with(char::is_whitespace) && !line.trim().is_empty() {
            let last = entries.last_mut().expect("continuation after an entry");
            last.1.push(' ');
            last.1.push_str(line.trim());
        }
    }
    entries
}

/// One element of a synopsis entry.
#[derive(Debug, PartialEq)]
enum Item {
    /// `--flag` with its placeholder value, if any.
    Flag(String, Option<String>),
    /// A positional placeholder such as `IMAGE...`.
    Positional(String),
    /// A literal word such as the `deploys` subcommand.
    Word(String),
}

/// Splits a synopsis entry (after `prewarm SUB`) into required items and
/// optional `[...]` groups (brackets inside a placeholder, as in
/// `os/arch[/variant]`, stay part of it).
fn synopsis_items(rest: &str) -> (Vec<Item>, Vec<Vec<Item>>) {
    let mut required = Vec::new();
    let mut optional = Vec::new();
    let mut depth = 0usize;
    let mut group = String::new();
    let mut outside = String::new();
    for c in rest.chars() {
        match c {
            '[' if depth == 0 => {
                required.extend(items(&outside));
                outside.clear();
                depth = 1;
            }
            '[' => {
                depth += 1;
                group.push(c);
            }
            ']' if depth == 1 => {
                optional.push(items(&group));
                group.clear();
                depth = 0;
            }
            ']' => {
                depth -= 1;
                group.push(c);
            }
            c if depth > 0 => group.push(c),
            c => outside.push(c),
        }
    }
    assert_eq!(depth, 0, "unbalanced brackets in synopsis: {rest}");
    required.extend(items(&outside));
    (required, optional)
}

fn items(text: &str) -> Vec<Item> {
    let mut out = Vec::new();
    let mut words = text.split_whitespace().peekable();
    while let Some(w) = words.next() {
        if w.starts_with("--") {
            let value = words.next_if(|v| !v.starts_with("--")).map(str::to_owned);
            out.push(Item::Flag(w.to_owned(), value));
        } else if w.bytes().all(|b| b.is_ascii_lowercase()) {
            out.push(Item::Word(w.to_owned()));
        } else {
            out.push(Item::Positional(w.to_owned()));
        }
    }
    out
}

/// A concrete value for a synopsis placeholder; literal examples (`10m`,
/// `fail-open`) stand for themselves. `a|b` alternatives give several.
fn samples(placeholder: &str) -> Vec<String> {
    placeholder
        .split('|')
        .map(|alt| {
            let sample = match alt {
                "PATH" | "FILE" | "DIR" => "/etc/prewarm/x",
                "FILE,..." => "/etc/a.json,/etc/b.json",
                "NS" => "k8s.io",
                "NS,..." => "erp,billing",
                "N" => "2",
                "BYTES" => "50MiB",
                "ADDR" => "127.0.0.1:9000",
                "NAME" => "aks-integrations-0",
                "HOST,..." => "status.example.com,*.corp.internal",
                "HOST=RATE" => "reg.example:5000=100MiB,nodes=2",
                "URL" => "http://127.0.0.1:9465",
                "TIME" => "2026-11-23T06:30:00Z",
                "k=v,..." => "kubernetes.azure.com/agentpool=integrations,zone=1",
                "os/arch[/variant]" => "linux/arm/v7",
                "IMAGE..." => "reg.example/app:1",
                other if other.bytes().any(|b| b.is_ascii_uppercase()) => {
                    panic!("no sample value for synopsis placeholder {other:?}: add one")
                }
                other => other,
            };
            sample.to_owned()
        })
        .collect()
}

fn push_item(line: &mut Vec<String>, item: &Item) {
    match item {
        Item::Flag(flag, value) => {
            line.push(flag.clone());
            line.extend(value.iter().map(|v| samples(v).remove(0)));
        }
        Item::Positional(p) => line.push(samples(p).remove(0)),
        Item::Word(w) => line.push(w.clone()),
    }
}

/// Concrete command lines for one synopsis entry: every option as
/// written, the same with literal words (subcommands) first so the flags
/// come after them, and each further `a|b` alternative on its own.
fn synopsis_lines(entry: &str) -> Vec<Vec<String>> {
    let mut words = entry.split_whitespace();
    let (prog, sub) = (words.next(), words.next());
    assert_eq!(prog, Some("prewarm"), "{entry}");
    let sub = sub.expect("a subcommand").to_owned();
    let rest = entry.split_once(&sub).map(|(_, r)| r).unwrap_or_default();
    let (required, optional) = synopsis_items(rest);
    let mut base = vec!["prewarm".to_owned(), sub];
    for item in &required {
        push_item(&mut base, item);
    }
    let all: Vec<&Item> = optional.iter().flatten().collect();
    let mut as_written = base.clone();
    let mut words_first = base.clone();
    for item in &all {
        push_item(&mut as_written, item);
    }
    for item in all.iter().filter(|i| matches!(i, Item::Word(_))) {
        push_item(&mut words_first, item);
    }
    for item in all.iter().filter(|i| !matches!(i, Item::Word(_))) {
        push_item(&mut words_first, item);
    }
    let mut lines = vec![as_written, words_first];
    for item in &all {
        if let Item::Flag(flag, Some(value)) = item {
            for alt in samples(value).into_iter().skip(1) {
                let mut line = base.clone();
                line.extend([flag.clone(), alt]);
                lines.push(line);
            }
        }
    }
    lines
}

/// `prewarm` invocations in shell scripts: the variable a script assigns
/// the binary's path to (`PREWARM=".../prewarm"`), then every command
/// that starts with it, continuation lines joined.
fn script_lines(name: &str, text: &str) -> Vec<Found> {
    let joined = text.replace("\\\n", " ");
    let vars: Vec<String> = joined
        .lines()
        .filter_map(|l| l.trim().split_once('='))
        .filter(|(var, value)| {
            var.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
                && value.trim_matches('"').ends_with("/prewarm")
        })
        .map(|(var, _)| var.to_owned())
        .collect();
    let mut out = Vec::new();
    for line in joined.lines() {
        for var in &vars {
            for pat in [format!("\"${var}\" "), format!("${var} ")] {
                let mut from = 0;
                while let Some(i) = line[from..].find(&pat) {
                    let at = from + i;
                    let mut words = vec!["prewarm".to_owned()];
                    words.extend(shell_words(&line[at + pat.len()..]));
                    out.push(Found {
                        origin: format!("{name}: {}", line.trim()),
                        words,
                    });
                    from = at + pat.len();
                }
            }
        }
    }
    out
}

/// Container args of every manifest container that runs the prewarm image.
fn manifest_lines(name: &str, text: &str) -> Vec<Found> {
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let Ok(value) = <serde_yaml_ng::Value as serde::Deserialize>::deserialize(doc) else {
            continue;
        };
        let containers = &value["spec"]["template"]["spec"]["containers"];
        for c in containers.as_sequence().into_iter().flatten() {
            let image = c["image"].as_str().unwrap_or_default();
            if !image.contains("/prewarm") {
                continue;
            }
            let mut words = vec!["prewarm".to_owned()];
            for a in c["args"].as_sequence().into_iter().flatten() {
                words.push(a.as_str().expect("string args").to_owned());
            }
            out.push(Found {
                origin: format!("{name}: container {}", c["name"].as_str().unwrap_or("?")),
                words,
            });
        }
    }
    out
}

/// Files with `ext` in `dir` (relative to the package root), sorted.
fn files(dir: &str, ext: &str) -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out: Vec<(String, String)> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (
                format!(
                    "{dir}/{}",
                    p.file_name().unwrap_or_default().to_string_lossy()
                ),
                text,
            )
        })
        .collect();
    out.sort();
    out
}

fn parse(words: &[String]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(words)
}

fn failures(found: &[Found], tolerate_missing: bool) -> Vec<String> {
    found
        .iter()
        .filter_map(|f| match parse(&f.words) {
            Ok(_) => None,
            Err(e)
                if tolerate_missing
                    && matches!(
                        e.kind(),
                        ErrorKind::MissingRequiredArgument
                            | ErrorKind::MissingSubcommand
                            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                    ) =>
            {
                None
            }
            Err(e) => Some(format!(
                "{}: {}\n{}",
                f.origin,
                f.words.join(" "),
                e.render()
            )),
        })
        .collect()
}

#[test]
fn readme_command_lines_parse() {
    let (blocks, inline) = readme_lines(README);
    assert!(blocks.len() >= 2, "found only {blocks:?}");
    let mut bad = failures(&blocks, false);
    // Inline code may name a command without its required arguments.
    bad.extend(failures(&inline, true));
    assert!(
        bad.is_empty(),
        "README command lines that do not parse:\n{}",
        bad.join("\n")
    );
}

#[test]
fn readme_synopsis_parses_with_every_option() {
    let entries = synopsis(README);
    let subcommands: Vec<&str> = entries
        .iter()
        .filter_map(|(_, e)| e.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        subcommands,
        ["pull", "agent", "plan", "coordinator", "status"]
    );
    let mut bad = Vec::new();
    for (origin, entry) in &entries {
        for words in synopsis_lines(entry) {
            if let Err(e) = parse(&words) {
                bad.push(format!("{origin}: {}\n{}", words.join(" "), e.render()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "synopsis lines that do not parse:\n{}",
        bad.join("\n")
    );
}

/// The synopsis lists every visible flag of each subcommand.
#[test]
fn readme_synopsis_is_complete() {
    let cli = Cli::command();
    let mut missing = Vec::new();
    for (_, entry) in synopsis(README) {
        let sub = entry.split_whitespace().nth(1).unwrap_or_default();
        let cmd = cli
            .find_subcommand(sub)
            .unwrap_or_else(|| panic!("no subcommand {sub}"));
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(long) = arg.get_long() {
                let flag = format!("--{long}");
                let listed = entry
                    .split(|c: char| c.is_whitespace() || c == '[' || c == ']')
                    .any(|w| w == flag);
                if !listed && long != "help" {
                    missing.push(format!("prewarm {sub} {flag}"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "flags missing from the README synopsis: {missing:?}"
    );
}

#[test]
fn script_and_manifest_command_lines_parse() {
    let mut found = Vec::new();
    for (name, text) in files("scripts", "sh") {
        found.extend(script_lines(&name, &text));
    }
    let from_scripts = found.len();
    assert!(from_scripts >= 5, "found only {found:?}");
    for (name, text) in files("daemonset", "yaml") {
        found.extend(manifest_lines(&name, &text));
    }
    assert!(
        found.len() >= from_scripts + 2,
        "no manifest container args found"
    );
    let mut bad = failures(&found, false);
    // Comments may name a command without its required arguments.
    let mut mentions = Vec::new();
    for dir in ["config", "daemonset"] {
        for (name, text) in files(dir, "yaml") {
            mentions.extend(comment_spans(&name, &text));
        }
    }
    assert!(!mentions.is_empty(), "no `prewarm ...` in YAML comments");
    bad.extend(failures(&mentions, true));
    assert!(
        bad.is_empty(),
        "command lines that do not parse:\n{}",
        bad.join("\n")
    );
}

/// The extractors themselves: what they must find and what they must skip.
#[test]
fn extractors_find_commands() {
    assert_eq!(
        shell_words(r#"pull --socket "$SOCKET" --root "${A[@]}/r" 'a b' | tail -1"#),
        ["pull", "--socket", "x", "--root", "x/r", "a b"]
    );
    assert_eq!(
        shell_words("agent --listen 1:2 2>log &"),
        ["agent", "--listen", "1:2"]
    );
    assert_eq!(shell_words("plan  # a comment"), ["plan"]);
    let md = "text `prewarm pull` and `ls`\n```console\n$ prewarm status deploys --json\nout\n```\n```sh\nprewarm plan --config f # c\n```\n";
    let (blocks, inline) = readme_lines(md);
    let words: Vec<String> = blocks.iter().map(|f| f.words.join(" ")).collect();
    assert_eq!(
        words,
        ["prewarm status deploys --json", "prewarm plan --config f"]
    );
    assert_eq!(inline.len(), 1);
    assert_eq!(inline[0].words, ["prewarm", "pull"]);
    let yaml = "a: 1 # see `prewarm status --json` and `x`\n# `prewarm plan`\n";
    let spans: Vec<String> = comment_spans("c.yaml", yaml)
        .iter()
        .map(|f| f.words.join(" "))
        .collect();
    assert_eq!(spans, ["prewarm status --json", "prewarm plan"]);
    let sh = "P=\"$ROOT/target/release/prewarm\"\n\"$P\" pull --socket \"$S\" \\\n  --pin a b\nx=$(\"$P\" testkit push --corpus demo)\n";
    let lines: Vec<String> = script_lines("t.sh", sh)
        .iter()
        .map(|f| f.words.join(" "))
        .collect();
    assert_eq!(
        lines,
        [
            "prewarm pull --socket x --pin a b",
            "prewarm testkit push --corpus demo"
        ]
    );
    let lines =
        synopsis_lines("prewarm status [--coordinator URL] [--json] [deploys] [--gate-policy a|b]");
    let lines: Vec<String> = lines.iter().map(|l| l.join(" ")).collect();
    assert_eq!(
        lines,
        [
            "prewarm status --coordinator http://127.0.0.1:9465 --json deploys --gate-policy a",
            "prewarm status deploys --coordinator http://127.0.0.1:9465 --json --gate-policy a",
            "prewarm status --gate-policy b",
        ]
    );
    let (req, opt) = synopsis_items(" IMAGE... [--platform os/arch[/variant]] [--a X --b Y]");
    assert_eq!(req, [Item::Positional("IMAGE...".into())]);
    assert_eq!(
        opt[0],
        [Item::Flag(
            "--platform".into(),
            Some("os/arch[/variant]".into())
        )]
    );
    assert_eq!(opt[1].len(), 2);
}
