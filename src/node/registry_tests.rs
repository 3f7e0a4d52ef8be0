//! Tests of `node::registry` (a child module: they reach its private parts).

use super::*;

#[test]
fn parses_bearer_challenge() {
    let c = parse_challenge(
        r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
    );
    assert_eq!(c.scheme, "bearer");
    assert_eq!(c.realm, "https://auth.example/token");
    assert_eq!(c.service.as_deref(), Some("registry.example"));
    assert_eq!(c.scope.as_deref(), Some("repository:a/b:pull"));
    let c = parse_challenge(r#"Basic realm="Registry Realm""#);
    assert_eq!(c.scheme, "basic");
    assert_eq!(c.realm, "Registry Realm");
}

#[test]
fn retry_after_forms() {
    assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
        Some(Duration::ZERO)
    );
    assert_eq!(parse_retry_after("soon"), None);
}

/// A server asking for a day, as seconds or as an HTTP date, waits at
/// most maxBackoff (plus the backoff's jitter) per retry.
#[tokio::test(start_paused = true)]
async fn retry_after_is_capped_at_max_backoff() {
    use crate::config::RetryPolicy;
    use crate::node::pull::PullError;
    use crate::node::retry::{retry, Backoff};
    let max = Duration::from_secs(30);
    let policy = RetryPolicy {
        attempts: 3,
        initial_backoff: Duration::from_millis(100),
        max_backoff: max,
    };
    let tomorrow = std::time::SystemTime::now() + Duration::from_secs(86_400);
    let date = httpdate_format(tomorrow);
    for header in ["86400", date.as_str()] {
        let after = parse_retry_after(header);
        assert!(after.unwrap() > max, "{header}: {after:?}");
        let start = tokio::time::Instant::now();
        let cancel = tokio_util::sync::CancellationToken::new();
        let out: std::result::Result<(), PullError> =
            retry(Backoff::new(&policy), &cancel, || async {
                Err(PullError::Registry {
                    image: "i".into(),
                    source: RegistryError::Http {
                        url: "u".into(),
                        status: 429,
                        retry_after: after,
                    },
                })
            })
            .await;
        assert!(out.is_err());
        let waited = start.elapsed();
        assert!(
            waited >= 2 * max && waited <= 4 * max,
            "Retry-After: {header} made 2 retries wait {waited:?} with maxBackoff {max:?}"
        );
    }
}

/// IMF-fixdate, for tests.
fn httpdate_format(t: std::time::SystemTime) -> String {
    // humantime gives RFC 3339; rearrange it into the HTTP form.
    let r = humantime::format_rfc3339_seconds(t).to_string();
    let (date, time) = r.trim_end_matches('Z').split_once('T').unwrap();
    let mut ymd = date.split('-');
    let (y, m, d) = (
        ymd.next().unwrap(),
        ymd.next().unwrap(),
        ymd.next().unwrap(),
    );
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = months[m.parse::<usize>().unwrap() - 1];
    // The weekday is not checked by the parser.
    format!("Mon, {d} {month} {y} {time} GMT")
}

#[test]
fn classification() {
    let e = RegistryError::Http {
        url: "u".into(),
        status: 503,
        retry_after: None,
    };
    assert!(e.is_transient());
    let e = RegistryError::Http {
        url: "u".into(),
        status: 429,
        retry_after: Some(Duration::from_secs(2)),
    };
    assert!(e.is_transient());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
    let e = RegistryError::Unauthorized {
        registry: "r".into(),
        repository: "x".into(),
        status: 401,
    };
    assert!(!e.is_transient());
    let e = RegistryError::DigestMismatch {
        what: "m".into(),
        expected: "a".into(),
        actual: "b".into(),
    };
    assert!(!e.is_transient());
}
