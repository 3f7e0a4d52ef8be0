//! Which node records the coordinator forgets, so its state follows the
//! cluster under node churn instead of growing with every node ever seen.
//! Pure: (retention, what is known of each node, now) → the nodes to drop.
//!
//! A record whose agent holds a stream is always kept: a new node's agent
//! can attach before the Node watch delivers the node. A disconnected record
//! is dropped when the API server no longer lists its node (once Nodes have
//! been listed at all), or when its agent has been silent past the TTL (the
//! fallback without a Node watch, or for a deletion the watch missed).

use std::time::Duration;

use chrono::{DateTime, Utc};

/// How long the coordinator remembers a disconnected node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// A disconnected node silent this long is forgotten.
    pub silent_ttl: Duration,
}

/// The default TTL of a disconnected node's last report.
pub const DEFAULT_SILENT_TTL: Duration = Duration::from_secs(3600);

impl Default for Retention {
    fn default() -> Self {
        Self {
            silent_ttl: DEFAULT_SILENT_TTL,
        }
    }
}

/// What is known about one node record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen<'a> {
    pub node: &'a str,
    pub connected: bool,
    pub last_report: DateTime<Utc>,
    /// Whether the API server lists the node; `None` while Nodes are not
    /// watched or their first list is not complete.
    pub in_api: Option<bool>,
}

/// Why a record is forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The API server no longer lists the node.
    Deleted,
    /// Its agent has been disconnected and silent past the TTL.
    Silent,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Deleted => "deleted",
            Why::Silent => "silent",
        }
    }
}

/// Whether to forget one record, and why.
pub fn verdict(ret: &Retention, seen: &Seen<'_>, now: DateTime<Utc>) -> Option<Why> {
    if seen.connected {
        return None;
    }
    if seen.in_api == Some(false) {
        return Some(Why::Deleted);
    }
    let ttl = chrono::Duration::from_std(ret.silent_ttl).unwrap_or(chrono::Duration::MAX);
    let silent = now.signed_duration_since(seen.last_report);
    (silent > ttl).then_some(Why::Silent)
}

/// The records to forget, with why, in input order.
pub fn to_forget<'a>(
    ret: &Retention,
    nodes: impl IntoIterator<Item = Seen<'a>>,
    now: DateTime<Utc>,
) -> Vec<(String, Why)> {
    nodes
        .into_iter()
        .filter_map(|s| verdict(ret, &s, now).map(|w| (s.node.to_string(), w)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn seen(node: &str, connected: bool, last: i64, in_api: Option<bool>) -> Seen<'_> {
        Seen {
            node,
            connected,
            last_report: t(last),
            in_api,
        }
    }

    const RET: Retention = Retention {
        silent_ttl: Duration::from_secs(600),
    };

    #[test]
    fn connected_nodes_are_kept_whatever_the_api_says() {
        for in_api in [None, Some(true), Some(false)] {
            assert_eq!(
                verdict(&RET, &seen("n", true, 0, in_api), t(1_000_000)),
                None
            );
        }
    }

    #[test]
    fn a_disconnected_node_the_api_no_longer_lists_goes_at_once() {
        assert_eq!(
            verdict(&RET, &seen("n", false, 10, Some(false)), t(11)),
            Some(Why::Deleted)
        );
        assert_eq!(
            verdict(&RET, &seen("n", false, 10, Some(true)), t(11)),
            None
        );
        // Nodes not listed (yet): only the TTL applies.
        assert_eq!(verdict(&RET, &seen("n", false, 10, None), t(11)), None);
    }

    #[test]
    fn a_disconnected_node_goes_after_the_ttl_even_if_listed() {
        for in_api in [None, Some(true)] {
            assert_eq!(
                verdict(&RET, &seen("n", false, 0, in_api), t(600)),
                None,
                "at the TTL"
            );
            assert_eq!(
                verdict(&RET, &seen("n", false, 0, in_api), t(601)),
                Some(Why::Silent)
            );
        }
        // A report from the future (clock skew) is not silent.
        assert_eq!(verdict(&RET, &seen("n", false, 50, None), t(0)), None);
    }

    #[test]
    fn a_huge_ttl_never_overflows() {
        let forever = Retention {
            silent_ttl: Duration::MAX,
        };
        assert_eq!(
            verdict(&forever, &seen("n", false, -1_000_000_000, None), t(0)),
            None
        );
    }

    #[test]
    fn the_batch_keeps_input_order_and_reasons() {
        let nodes = [
            seen("a", false, 0, Some(false)),
            seen("b", true, 0, Some(false)),
            seen("c", false, 0, Some(true)),
            seen("d", false, 990, Some(true)),
        ];
        assert_eq!(
            to_forget(&RET, nodes, t(1000)),
            vec![
                ("a".to_string(), Why::Deleted),
                ("c".to_string(), Why::Silent)
            ]
        );
    }
}
