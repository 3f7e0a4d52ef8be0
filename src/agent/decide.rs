//! The reconcile loop's small decisions, pure: which images are candidates,
//! in which order actions run, which window caps a pull, when to wake, and
//! when a failed pull is tried again.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::config::reference::ImageRef;
use crate::config::AgentConfig;
use crate::k8s::Labels;
use crate::node::pull::WindowBandwidth;
use crate::plan::pull_start::{Cap, Starts};
use crate::plan::warm::Action;
use crate::plan::windows::{registry_of, WindowStatus};

/// The shortest and longest sleep between reconciles.
pub const MIN_WAKE: Duration = Duration::from_millis(200);
/// A failed image is tried again at most this far apart.
pub const MAX_PULL_BACKOFF: Duration = Duration::from_secs(600);

/// Config images and the images of windows applying to this node, by CRI name.
pub fn local_candidates(cfg: &AgentConfig, labels: &Labels) -> BTreeMap<String, ImageRef> {
    let windows = cfg.windows.iter().filter(|w| w.applies_to(labels));
    cfg.images
        .iter()
        .map(|e| &e.image)
        .chain(windows.flat_map(|w| w.images.iter().map(|i| &i.image)))
        .map(|i| (i.cri_name(), i.clone()))
        .collect()
}

/// Pin changes first (quick label writes) in plan order, then warms by
/// priority, highest first (late windows before anything else). Any
/// priority a coordinator sends sorts without overflow.
pub fn order_actions(mut actions: Vec<Action>) -> Vec<Action> {
    actions.sort_by_key(|a| match a {
        Action::Warm { priority, .. } => (1, priority.saturating_neg()),
        _ => (0, 0),
    });
    actions
}

/// The bandwidth budget of the highest-priority window that sets one: the
/// pull counts against that window's budget, inside the node's.
pub fn window_bandwidth(cfg: &AgentConfig, windows: &[String]) -> Option<WindowBandwidth> {
    cfg.windows
        .iter()
        .filter(|w| windows.contains(&w.name))
        .filter_map(|w| Some((w.priority, &w.name, w.pacing.as_ref()?.bandwidth?)))
        .max_by_key(|(p, _, _)| *p)
        .map(|(_, name, b)| WindowBandwidth {
            window: name.clone(),
            bytes_per_sec: b.0,
        })
}

/// Whether a pull starts now, and with which window budget, or waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullStart {
    Now(Option<WindowBandwidth>),
    /// Its windows' schedule (or jittered plan) starts it then.
    At(DateTime<Utc>),
}

/// When the image `name`, wanted for `reasons` (window names and
/// `intent:<id>`), starts pulling. Config and intent images start now;
/// an image only windows want waits for their start from `starts` and is
/// capped by their registry schedule.
pub fn pull_start(
    cfg: &AgentConfig,
    starts: &Starts,
    statuses: &[WindowStatus],
    name: &str,
    reasons: &[String],
    now: DateTime<Utc>,
) -> PullStart {
    let windows: Vec<String> = reasons
        .iter()
        .filter(|r| !r.starts_with("intent:"))
        .cloned()
        .collect();
    let registry = registry_of(name);
    let windows_only = windows.len() == reasons.len()
        && !windows.is_empty()
        && !cfg.images.iter().any(|e| e.image.cri_name() == name);
    if windows_only {
        if let Some(at) = starts.not_before(statuses, &windows, &registry) {
            if at > now {
                return PullStart::At(at);
            }
        }
    }
    let cap = starts.pull_cap(statuses, &windows, &registry);
    PullStart::Now(scheduled_bandwidth(cfg, &windows, cap))
}

/// The engine budget for a pull: the window's `pacing.bandwidth` (see
/// [`window_bandwidth`]) and, under a registry schedule, its cap too. The
/// engine nests one budget per pull inside the node's, so a capped pull
/// gets its own budget per window and registry at the lower of the cap
/// and the window's bandwidth split over the registries it pulls from:
/// neither the schedule nor the window's budget is exceeded.
pub fn scheduled_bandwidth(
    cfg: &AgentConfig,
    windows: &[String],
    cap: Option<Cap>,
) -> Option<WindowBandwidth> {
    let base = window_bandwidth(cfg, windows);
    let Some(cap) = cap else { return base };
    let registries = |w: &str| {
        let w = cfg.windows.iter().find(|x| x.name == w);
        let regs: std::collections::BTreeSet<&str> = w
            .into_iter()
            .flat_map(|w| w.images.iter().map(|i| i.image.registry.as_str()))
            .collect();
        regs.len().max(1) as u64
    };
    let share = base
        .as_ref()
        .filter(|b| b.bytes_per_sec > 0)
        .map(|b| (b.window.clone(), b.bytes_per_sec / registries(&b.window)));
    let rate = share.as_ref().map_or(cap.bytes_per_sec, |(_, s)| {
        cap.bytes_per_sec.min((*s).max(1))
    });
    let single = share
        .as_ref()
        .is_some_and(|(w, _)| *w == cap.window && registries(w) == 1);
    let key = if single {
        cap.window.clone()
    } else {
        format!("{}/{}", cap.window, cap.registry)
    };
    Some(WindowBandwidth {
        window: key,
        bytes_per_sec: rate,
    })
}

/// The first of `windows` whose maxConcurrentPulls is reached by the pulls
/// `in_flight` (image → the windows it is pulled for), if any.
pub fn window_at_capacity(
    cfg: &AgentConfig,
    windows: &[String],
    in_flight: &BTreeMap<String, Vec<String>>,
) -> Option<String> {
    windows.iter().find_map(|w| {
        let cap = cfg
            .windows
            .iter()
            .find(|x| &x.name == w)?
            .pacing
            .as_ref()?
            .max_concurrent_pulls?;
        let running = in_flight.values().filter(|ws| ws.contains(w)).count();
        (running >= cap).then(|| w.clone())
    })
}

/// How long to sleep: until the first of `wakeups` still ahead, at least
/// [`MIN_WAKE`] and at most `resync`.
pub fn next_wake(
    now: DateTime<Utc>,
    wakeups: impl IntoIterator<Item = Option<DateTime<Utc>>>,
    resync: Duration,
) -> Duration {
    wakeups
        .into_iter()
        .flatten()
        .filter(|t| *t > now)
        .min()
        .and_then(|t| (t - now).to_std().ok())
        .unwrap_or(resync)
        .clamp(MIN_WAKE, resync.max(MIN_WAKE))
}

/// When the first of `holds` (hold-until times of our pins) has less than
/// `period` left: the plan renews a running intent's hold then, so a pin
/// outlives its intent by at least `period` however rarely the loop
/// wakes otherwise.
pub fn renew_wake(
    holds: impl IntoIterator<Item = DateTime<Utc>>,
    period: Duration,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let period = TimeDelta::from_std(period).unwrap_or(TimeDelta::MAX);
    let just_under = TimeDelta::milliseconds(1);
    holds
        .into_iter()
        .filter_map(|t| t.checked_sub_signed(period)?.checked_add_signed(just_under))
        .filter(|t| *t > now)
        .min()
}

/// Images whose last pull failed: each waits `first`, doubling per failure
/// up to [`MAX_PULL_BACKOFF`], before it is pulled again. Without it a
/// pull that fails at once (401, 404) would be retried in a hot loop.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Backoffs {
    /// Image → (failures in a row, not before).
    waiting: BTreeMap<String, (u32, DateTime<Utc>)>,
}

impl Backoffs {
    pub fn failed(&mut self, name: &str, first: Duration, now: DateTime<Utc>) {
        let failures = self.waiting.get(name).map_or(0, |(n, _)| *n) + 1;
        let factor = 1u32 << (failures - 1).min(16);
        let wait = first
            .max(MIN_WAKE)
            .saturating_mul(factor)
            .min(MAX_PULL_BACKOFF);
        let until = now + TimeDelta::from_std(wait).unwrap_or(TimeDelta::MAX);
        self.waiting.insert(name.to_string(), (failures, until));
    }

    pub fn succeeded(&mut self, name: &str) {
        self.waiting.remove(name);
    }

    /// Whether `name` may be pulled now.
    pub fn ready(&self, name: &str, now: DateTime<Utc>) -> bool {
        self.waiting.get(name).is_none_or(|(_, t)| *t <= now)
    }

    /// The first retry still ahead of `now`.
    pub fn next(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.waiting
            .values()
            .map(|(_, t)| *t)
            .filter(|t| *t > now)
            .min()
    }

    /// Images waiting out a backoff at `now`.
    pub fn waiting(&self, now: DateTime<Utc>) -> usize {
        self.waiting.values().filter(|(_, t)| *t > now).count()
    }

    /// Forgets images no longer wanted.
    pub fn retain(&mut self, wanted: impl Fn(&str) -> bool) {
        self.waiting.retain(|n, _| wanted(n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn warm(name: &str, priority: i64) -> Action {
        Action::Warm {
            name: name.into(),
            pin: true,
            priority,
        }
    }

    #[test]
    fn candidates_are_config_images_and_applying_windows() {
        let cfg = AgentConfig::from_yaml(
            "images: [r.example/a:1]\nwindows:\n- {name: w, schedule: '0 8 * * *', duration: 1h, nodeSelector: {pool: int}, images: [r.example/b:1]}\n",
        )
        .unwrap();
        let none = Labels::new();
        let int: Labels = [("pool".to_string(), "int".to_string())]
            .into_iter()
            .collect();
        let names = |l: &Labels| local_candidates(&cfg, l).into_keys().collect::<Vec<_>>();
        assert_eq!(names(&none), ["r.example/a:1"]);
        assert_eq!(names(&int), ["r.example/a:1", "r.example/b:1"]);
    }

    #[test]
    fn warms_by_priority_then_pin_changes() {
        let unpin = Action::Unpin {
            record: "r/x:1".into(),
        };
        let got = order_actions(vec![
            unpin.clone(),
            warm("low", 0),
            warm("late", 100),
            warm("min", i64::MIN),
        ]);
        assert_eq!(
            got,
            vec![
                unpin,
                warm("late", 100),
                warm("low", 0),
                warm("min", i64::MIN)
            ]
        );
    }

    #[test]
    fn window_caps_and_bandwidth() {
        let cfg = AgentConfig::from_yaml(
            "windows:\n- {name: a, schedule: '0 8 * * *', duration: 1h, images: [r.example/a:1], priority: 1, pacing: {maxConcurrentPulls: 1, bandwidth: 10MiB}}\n- {name: b, schedule: '0 8 * * *', duration: 1h, images: [r.example/b:1], priority: 2, pacing: {bandwidth: 20MiB}}\n",
        )
        .unwrap();
        let ws = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let budget = |w: &str, b: u64| {
            Some(WindowBandwidth {
                window: w.into(),
                bytes_per_sec: b,
            })
        };
        assert_eq!(window_bandwidth(&cfg, &ws(&["a"])), budget("a", 10 << 20));
        assert_eq!(
            window_bandwidth(&cfg, &ws(&["a", "b"])),
            budget("b", 20 << 20)
        );
        assert_eq!(window_bandwidth(&cfg, &[]), None);
        let mut running = BTreeMap::new();
        assert_eq!(window_at_capacity(&cfg, &ws(&["a"]), &running), None);
        running.insert("r.example/a:1".to_string(), ws(&["a"]));
        assert_eq!(
            window_at_capacity(&cfg, &ws(&["a", "b"]), &running),
            Some("a".into())
        );
        assert_eq!(window_at_capacity(&cfg, &ws(&["b"]), &running), None);
    }

    /// Issue 13: a window-only image waits for its schedule's start and is
    /// capped by it inside the window's own bandwidth; config and intent
    /// images start now.
    #[test]
    fn schedules_hold_back_and_cap_window_pulls() {
        use crate::plan::windows::Phase;
        use crate::wire::v1::PullSchedule;
        let cfg = AgentConfig::from_yaml(
            "images: [a.example/cfg:1]\nwindows:\n- {name: w, schedule: '0 8 * * *', duration: 1h, images: [a.example/x:1], pacing: {bandwidth: 10MB}}\n- {name: m, schedule: '0 8 * * *', duration: 1h, images: [a.example/y:1, b.example/z:1], pacing: {bandwidth: 10MB}}\n",
        )
        .unwrap();
        let status = |name: &str, phase| WindowStatus {
            name: name.into(),
            source: "config".into(),
            applies: true,
            phase,
            next_activation: t(1000),
            occurrence: None,
            warm_start: t(0),
            local_warm_start: t(0),
            images: vec![],
            missing_bytes: None,
            missing_by_registry: Default::default(),
            estimated_pull: Duration::ZERO,
            priority: 0,
            all_warm: false,
        };
        let sched = |w: &str, start: i64, bps: u64| PullSchedule {
            window: w.into(),
            registry: "a.example".into(),
            start_unix: t(start).timestamp(),
            bytes_per_second: bps,
            late: false,
            deadline_unix: t(1000).timestamp(),
        };
        let schedules = [sched("w", 500, 4_000_000), sched("m", 0, 8_000_000)];
        let starts = Starts {
            node: "n1",
            max_jitter: Duration::ZERO,
            schedules: &schedules,
        };
        let statuses = [status("w", Phase::Warming), status("m", Phase::Warming)];
        let ws = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let start = |name: &str, reasons: &[&str], now| {
            pull_start(&cfg, &starts, &statuses, name, &ws(reasons), t(now))
        };
        assert_eq!(start("a.example/x:1", &["w"], 100), PullStart::At(t(500)));
        // Also wanted by an intent, or a config image: now, and uncapped by w.
        let now = PullStart::Now(Some(WindowBandwidth {
            window: "w".into(),
            bytes_per_sec: 4_000_000,
        }));
        assert_eq!(start("a.example/x:1", &["w"], 500), now);
        assert_eq!(
            start("a.example/x:1", &["w", "intent:r1"], 100),
            PullStart::Now(Some(WindowBandwidth {
                window: "w".into(),
                bytes_per_sec: 4_000_000,
            }))
        );
        assert!(matches!(
            start("a.example/cfg:1", &["w"], 100),
            PullStart::Now(_)
        ));
        // A window over two registries: its 10 MB/s split, below the cap.
        assert_eq!(
            start("a.example/y:1", &["m"], 100),
            PullStart::Now(Some(WindowBandwidth {
                window: "m/a.example".into(),
                bytes_per_sec: 5_000_000,
            }))
        );
        // No schedule for b.example: the window's own budget only.
        assert_eq!(
            start("b.example/z:1", &["m"], 100),
            PullStart::Now(Some(WindowBandwidth {
                window: "m".into(),
                bytes_per_sec: 10_000_000,
            }))
        );
        // An open window pulls now.
        let open = [status("w", Phase::Late)];
        let got = pull_start(&cfg, &starts, &open, "a.example/x:1", &ws(&["w"]), t(100));
        assert!(matches!(got, PullStart::Now(_)), "{got:?}");
    }

    #[test]
    fn wakes_at_the_first_event_within_bounds() {
        let resync = Duration::from_secs(60);
        assert_eq!(next_wake(t(0), [None, None], resync), resync);
        assert_eq!(
            next_wake(t(0), [Some(t(90)), Some(t(10))], resync),
            Duration::from_secs(10)
        );
        assert_eq!(
            next_wake(t(0), [Some(t(-5)), Some(t(20))], resync),
            Duration::from_secs(20)
        );
        assert_eq!(
            next_wake(t(0), [Some(t(0))], resync),
            resync,
            "past events are done"
        );
        assert_eq!(
            next_wake(
                t(0),
                [Some(t(0) + chrono::TimeDelta::milliseconds(1))],
                resync
            ),
            MIN_WAKE
        );
        assert_eq!(next_wake(t(0), [Some(t(500))], resync), resync);
    }

    #[test]
    fn holds_are_renewed_as_soon_as_less_than_the_period_is_left() {
        let period = Duration::from_secs(10);
        let ms = chrono::TimeDelta::milliseconds(1);
        assert_eq!(renew_wake([t(15), t(40)], period, t(0)), Some(t(5) + ms));
        // Past the threshold already: the pass now renews it.
        assert_eq!(renew_wake([t(8)], period, t(0)), None);
        assert_eq!(renew_wake([], period, t(0)), None);
    }

    #[test]
    fn failed_pulls_back_off_doubling_to_the_cap() {
        let mut b = Backoffs::default();
        let first = Duration::from_secs(30);
        b.failed("a", first, t(0));
        assert!(!b.ready("a", t(29)));
        assert!(b.ready("a", t(30)));
        assert!(b.ready("other", t(0)));
        assert_eq!(b.next(t(0)), Some(t(30)));
        b.failed("a", first, t(30));
        assert_eq!(b.next(t(30)), Some(t(90)));
        for _ in 0..20 {
            b.failed("a", first, t(0));
        }
        assert_eq!(b.next(t(0)), Some(t(600)), "capped");
        assert_eq!(b.waiting(t(0)), 1);
        b.succeeded("a");
        assert!(b.ready("a", t(0)));
        b.failed("c", first, t(0));
        b.retain(|n| n != "c");
        assert_eq!(b, Backoffs::default());
    }
}
