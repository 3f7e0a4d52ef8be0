use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;
use crate::wire::deploygroup::{HttpCheck, MemberSpec};

fn default() -> HttpCheckPolicy {
    HttpCheckPolicy::default()
}

fn allowing(patterns: &[&str]) -> HttpCheckPolicy {
    let allow = patterns.iter().map(|p| p.parse().unwrap()).collect();
    HttpCheckPolicy::new(DEFAULT_CLUSTER_DOMAIN, allow).unwrap()
}

#[test]
fn in_cluster_service_names_are_allowed() {
    for url in [
        "http://orders.prod.svc/healthz",
        "https://orders.prod.svc:8443/healthz?full=1",
        "http://orders.prod.svc.cluster.local/healthz",
        "http://ORDERS.Prod.SVC.Cluster.Local/healthz",
        "http://orders.prod.svc./healthz",
        "http://orders.prod.svc.cluster.local./healthz",
        "http://orders.svc/",
    ] {
        assert_eq!(default().check(url), Ok(()), "{url}");
    }
}

#[test]
fn other_hosts_are_refused_naming_the_flag() {
    for (url, host) in [
        ("http://example.com/", "example.com"),
        ("http://localhost:8080/", "localhost"),
        (
            "http://metadata.google.internal/",
            "metadata.google.internal",
        ),
        ("http://orders.prod/healthz", "orders.prod"),
        ("http://svc/", "svc"),
        (
            "http://orders.prod.svc.cluster.local.evil.com/",
            "orders.prod.svc.cluster.local.evil.com",
        ),
        ("http://orderssvc/", "orderssvc"),
        ("http://x.svc.other.local/", "x.svc.other.local"),
        // Pod DNS names are not Services.
        (
            "http://10-0-0-1.prod.pod.cluster.local/",
            "10-0-0-1.prod.pod.cluster.local",
        ),
    ] {
        let e = default().check(url).unwrap_err();
        assert_eq!(
            e,
            UrlRefusal::NotInCluster {
                host: host.into(),
                domain: "cluster.local".into()
            },
            "{url}"
        );
        let text = e.to_string();
        assert!(text.contains("--http-check-allow-host"), "{text}");
        assert!(text.contains(&format!("host {host} is not")), "{text}");
    }
    assert_eq!(
        default()
            .check("http://example.com/")
            .unwrap_err()
            .to_string(),
        "host example.com is not an in-cluster Service name (<service>.<namespace>.svc or \
         <service>.<namespace>.svc.cluster.local); the coordinator fetches other hosts only \
         when allowed with --http-check-allow-host"
    );
}

#[test]
fn ip_literals_are_refused_in_every_spelling() {
    let v4 = |a, b, c, d| UrlRefusal::Ip(Ipv4Addr::new(a, b, c, d).into());
    for (url, want) in [
        ("http://127.0.0.1/", v4(127, 0, 0, 1)),
        (
            "http://169.254.169.254/latest/meta-data/",
            v4(169, 254, 169, 254),
        ),
        ("http://2130706433/", v4(127, 0, 0, 1)),
        ("http://0x7f000001/", v4(127, 0, 0, 1)),
        ("http://0x7f.1/", v4(127, 0, 0, 1)),
        ("http://0177.0.0.1/", v4(127, 0, 0, 1)),
        ("http://127.1/", v4(127, 0, 0, 1)),
        ("http://%31%32%37.0.0.1/", v4(127, 0, 0, 1)),
        (
            "http://[::1]:8080/",
            UrlRefusal::Ip(Ipv6Addr::LOCALHOST.into()),
        ),
        (
            "http://[::ffff:169.254.169.254]/",
            UrlRefusal::Ip("::ffff:169.254.169.254".parse::<Ipv6Addr>().unwrap().into()),
        ),
    ] {
        assert_eq!(default().check(url), Err(want), "{url}");
        // No allow pattern can let an IP through.
        assert!(
            allowing(&["*.svc", "localhost"]).check(url).is_err(),
            "{url}"
        );
    }
    let e = default()
        .check("http://2130706433/")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "its host is the IP address 127.0.0.1; name a Service (or a host allowed with \
         --http-check-allow-host) instead"
    );
}

#[test]
fn schemes_userinfo_and_garbage_are_refused() {
    let p = default();
    for (url, want) in [
        ("ftp://orders.prod.svc/", UrlRefusal::Scheme("ftp".into())),
        ("file:///etc/passwd", UrlRefusal::Scheme("file".into())),
        (
            "gopher://orders.prod.svc/",
            UrlRefusal::Scheme("gopher".into()),
        ),
        ("http://user:pw@orders.prod.svc/", UrlRefusal::Userinfo),
        ("http://user@orders.prod.svc/", UrlRefusal::Userinfo),
        ("http://:pw@orders.prod.svc/", UrlRefusal::Userinfo),
    ] {
        assert_eq!(p.check(url), Err(want), "{url}");
    }
    for url in ["", "orders.prod.svc/healthz", "http://", "http://[::1/"] {
        assert!(
            matches!(p.check(url), Err(UrlRefusal::Unparsable(_))),
            "{url}"
        );
    }
    // The user info trick: the host is what follows `@`.
    assert!(matches!(
        p.check("http://orders.prod.svc@example.com/"),
        Err(UrlRefusal::Userinfo)
    ));
}

#[test]
fn the_allow_list_takes_names_and_suffix_patterns() {
    let p = allowing(&["Status.Example.com.", "*.corp.internal"]);
    assert_eq!(p.check("https://status.example.com/up"), Ok(()));
    assert_eq!(p.check("http://a.corp.internal/"), Ok(()));
    assert_eq!(p.check("http://a.b.corp.internal:81/"), Ok(()));
    assert!(p.check("http://corp.internal/").is_err());
    assert!(p.check("http://xcorp.internal/").is_err());
    assert!(p.check("http://other.example.com/").is_err());
    assert!(p.check("http://example.com/").is_err());
    // Cluster Services stay allowed.
    assert_eq!(p.check("http://orders.prod.svc/"), Ok(()));
}

#[test]
fn patterns_and_cluster_domains_are_checked() {
    assert_eq!(
        "*.Example.COM".parse::<HostPattern>(),
        Ok(HostPattern::Below("example.com".into()))
    );
    assert_eq!(
        " localhost ".parse::<HostPattern>(),
        Ok(HostPattern::Exact("localhost".into()))
    );
    assert_eq!(
        "*.example.com".parse::<HostPattern>().unwrap().to_string(),
        "*.example.com"
    );
    for (bad, message) in [
        (
            "10.0.0.1",
            "\"10.0.0.1\" is an IP address; only host names can be allowed",
        ),
        (
            "2130706433",
            "\"2130706433\" is an IP address; only host names can be allowed",
        ),
        (
            "*.10",
            "\"10\" is an IP address; only host names can be allowed",
        ),
        ("[::1]", "\"[::1]\" is not a host name"),
        (
            "*",
            "\"*\": `*` may only start a pattern, as in *.example.com",
        ),
        (
            "a.*.com",
            "\"a.*.com\": `*` may only start a pattern, as in *.example.com",
        ),
        (
            "*.*.com",
            "\"*.*.com\": `*` may only start a pattern, as in *.example.com",
        ),
        ("", "\"\" is not a host name"),
        ("*.", "\"*.\" is not a host name"),
        ("a..b", "\"a..b\" is not a host name"),
        ("http://x", "\"http://x\" is not a host name"),
        ("x/y", "\"x/y\" is not a host name"),
        ("user@x", "\"user@x\" is not a host name"),
    ] {
        let e = bad.parse::<HostPattern>().unwrap_err();
        assert_eq!(e.to_string(), message, "{bad}");
    }
    let p = HttpCheckPolicy::new("Corp.Example.", vec![]).unwrap();
    assert_eq!(p.cluster_domain(), "corp.example");
    assert_eq!(p.check("http://orders.prod.svc.corp.example/"), Ok(()));
    assert_eq!(p.check("http://orders.prod.svc/"), Ok(()));
    assert!(p.check("http://orders.prod.svc.cluster.local/").is_err());
    assert!(HttpCheckPolicy::new("10.0.0.1", vec![]).is_err());
    assert!(HttpCheckPolicy::new("", vec![]).is_err());
}

#[test]
fn a_refused_member_names_its_field() {
    let member = |name: &str, url: Option<&str>| MemberSpec {
        deployment: name.into(),
        http_check: url.map(|u| HttpCheck {
            url: u.into(),
            interval: crate::wire::deploygroup::Dur::secs(5),
        }),
        ..MemberSpec::default()
    };
    let spec = DeployGroupSpec {
        members: vec![
            member("web", None),
            member("orders", Some("http://orders.shop.svc/healthz")),
            member("billing", Some("http://billing.example.com/healthz")),
        ],
        ..DeployGroupSpec::default()
    };
    let e = default().check_spec(&spec).unwrap_err();
    assert_eq!(e.index, 2);
    assert_eq!(
        e.to_string(),
        "member billing: spec.members[2].httpCheck.url \"http://billing.example.com/healthz\" \
         is refused: host billing.example.com is not an in-cluster Service name \
         (<service>.<namespace>.svc or <service>.<namespace>.svc.cluster.local); the \
         coordinator fetches other hosts only when allowed with --http-check-allow-host"
    );
    assert_eq!(allowing(&["*.example.com"]).check_spec(&spec), Ok(()));
}

// ---- properties ----

/// A DNS label (starting with a letter: a numeric last label makes a
/// host an IPv4 address to the URL parser).
/// A DNS label the URL parser accepts: not `xn--…`, which it decodes as
/// punycode and refuses when invalid (e.g. `xn--d`).
fn label() -> impl Strategy<Value = String> {
    "[a-z]([a-z0-9-]{0,10}[a-z0-9])?".prop_filter("an IDNA A-label", |l| !l.starts_with("xn--"))
}

/// Spellings the URL parser reads as this IPv4 address.
fn ipv4_spellings(ip: Ipv4Addr) -> Vec<String> {
    let [a, b, c, d] = ip.octets();
    let n = u32::from(ip);
    vec![
        format!("{a}.{b}.{c}.{d}"),
        format!("{n}"),
        format!("0x{n:x}"),
        format!("0X{n:X}"),
        format!("0{n:o}"),
        format!("0x{a:x}.0x{b:x}.0x{c:x}.0x{d:x}"),
        format!("0{a:o}.0{b:o}.0{c:o}.0{d:o}"),
        format!("{a}.{}", (b as u32) << 16 | (c as u32) << 8 | d as u32),
        format!("{a}.{b}.{}", (c as u32) << 8 | d as u32),
        format!("{a}.{b}.{c}.{d}."),
        format!("[::ffff:{a}.{b}.{c}.{d}]"),
    ]
}

proptest! {
    /// No spelling of an IPv4 or IPv6 address gets through, whatever the
    /// allow list.
    #[test]
    fn no_ip_literal_is_ever_allowed(
        ip in any::<u32>().prop_map(Ipv4Addr::from),
        v6 in any::<u128>().prop_map(Ipv6Addr::from),
        port in proptest::option::of(1u16..),
        path in "(/[a-z0-9]{0,8}){0,3}",
    ) {
        let p = allowing(&["localhost", "*.svc", "*.example.com"]);
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        let mut hosts = ipv4_spellings(ip);
        hosts.push(format!("[{v6}]"));
        for host in hosts {
            for scheme in ["http", "https"] {
                let url = format!("{scheme}://{host}{port}{path}");
                let got = p.check(&url);
                prop_assert!(matches!(got, Err(UrlRefusal::Ip(_))), "{url}: {got:?}");
            }
        }
    }

    /// Generated Service URLs are allowed; with user info they are not.
    #[test]
    fn service_urls_are_allowed_and_userinfo_never(
        svc in label(), ns in label(), full in any::<bool>(),
        https in any::<bool>(), port in proptest::option::of(1u16..),
        path in "(/[a-zA-Z0-9._~-]{0,8}){0,3}", query in proptest::option::of("[a-z0-9=&]{0,12}"),
        user in "[a-z]{1,6}", password in proptest::option::of("[a-z0-9]{1,6}"),
    ) {
        let host = if full { format!("{svc}.{ns}.svc.cluster.local") } else { format!("{svc}.{ns}.svc") };
        let scheme = if https { "https" } else { "http" };
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        let query = query.map(|q| format!("?{q}")).unwrap_or_default();
        let url = format!("{scheme}://{host}{port}{path}{query}");
        prop_assert_eq!(default().check(&url), Ok(()), "{}", url);
        let auth = match password { Some(pw) => format!("{user}:{pw}@"), None => format!("{user}@") };
        let with_user = format!("{scheme}://{auth}{host}{port}{path}");
        prop_assert_eq!(default().check(&with_user), Err(UrlRefusal::Userinfo));
    }

    /// Whatever the input, an allowed URL is one the HTTP client sends to
    /// an in-cluster Service or an allowed name: http(s), no user info,
    /// a domain host.
    #[test]
    fn anything_allowed_goes_to_an_allowed_host(
        url in prop_oneof![
            "\\PC{0,40}",
            "(http|https|ftp|HTTP)://[a-z0-9.:@%\\[\\]_-]{0,30}(/[a-z]{0,4})?",
            (label(), label(), "(\\.svc|\\.svc\\.cluster\\.local|\\.example\\.com|)\\.?")
                .prop_map(|(a, b, s)| format!("http://{a}.{b}{s}/")),
        ],
    ) {
        let p = allowing(&["*.example.com"]);
        if p.check(&url).is_ok() {
            let u = Url::parse(&url).unwrap();
            prop_assert!(matches!(u.scheme(), "http" | "https"));
            prop_assert!(u.username().is_empty() && u.password().is_none());
            let Some(Host::Domain(d)) = u.host() else {
                return Err(TestCaseError::fail(format!("{url}: not a domain host")));
            };
            let d = d.strip_suffix('.').unwrap_or(d);
            let ok = [".svc", ".svc.cluster.local", ".example.com"]
                .iter()
                .any(|s| d.ends_with(s) && d.len() > s.len());
            prop_assert!(ok, "{url}: host {d}");
        }
    }

    /// `*.suffix` allows every name below the suffix and nothing else.
    #[test]
    fn a_suffix_pattern_matches_only_names_below_it(
        suffix in (label(), label()).prop_map(|(a, b)| format!("{a}.{b}")),
        below in proptest::collection::vec(label(), 1..3),
        other in label(),
    ) {
        let pattern: HostPattern = format!("*.{suffix}").parse().unwrap();
        let name = format!("{}.{suffix}", below.join("."));
        prop_assert!(pattern.matches(&name));
        prop_assert!(!pattern.matches(&suffix));
        let glued = format!("{other}{suffix}");
        let beyond = format!("{name}.{other}");
        let deeper = format!("{other}.{name}");
        prop_assert!(!pattern.matches(&glued));
        prop_assert!(!pattern.matches(&beyond));
        let exact: HostPattern = name.parse().unwrap();
        prop_assert!(exact.matches(&name));
        prop_assert!(!exact.matches(&deeper));
    }
}
