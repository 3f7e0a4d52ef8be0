//! What the agent should do to make its node match the desired images.

use std::collections::{BTreeMap, BTreeSet};

/// An image the node should hold, by the name CRI and the kubelet use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub name: String,
    pub pin: bool,
    /// False while only the pin is held (a window's grace period): a
    /// missing image is then not pulled again.
    pub pull: bool,
    /// Higher first when pull slots are scarce.
    pub priority: i64,
}

/// What CRI reports for a present image.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Present {
    /// Every record name of the image: tags, digests and the id.
    pub names: Vec<String>,
    pub pinned: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// CRI status per desired name; absent when CRI does not have it.
    pub present: BTreeMap<String, Present>,
    /// Record names carrying prewarm's pin marker.
    pub pinned_by_us: BTreeSet<String>,
    /// Names whose pull is already running.
    pub in_flight: BTreeSet<String>,
    /// Whether the runtime honours pins (containerd >= 1.7).
    pub pin_supported: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Pull (and pin if asked) an image that is missing.
    Warm {
        name: String,
        pin: bool,
        priority: i64,
    },
    /// The image is present but our pin is missing.
    Pin { name: String },
    /// Remove our pin from a record no desired image needs.
    Unpin { record: String },
}

pub fn plan(desired: &[Desired], observed: &Observed) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut keep_pinned = BTreeSet::new();
    for d in desired {
        match observed.present.get(&d.name) {
            None if observed.in_flight.contains(&d.name) || !d.pull => {}
            None => actions.push(Action::Warm {
                name: d.name.clone(),
                pin: d.pin,
                priority: d.priority,
            }),
            Some(p) => {
                if d.pin {
                    keep_pinned.extend(p.names.iter().cloned());
                    let ours = p.names.iter().any(|n| observed.pinned_by_us.contains(n));
                    if !ours && !p.pinned && observed.pin_supported {
                        actions.push(Action::Pin {
                            name: d.name.clone(),
                        });
                    }
                }
            }
        }
        if d.pin && observed.in_flight.contains(&d.name) {
            keep_pinned.insert(d.name.clone());
        }
    }
    for record in &observed.pinned_by_us {
        if !keep_pinned.contains(record) {
            actions.push(Action::Unpin {
                record: record.clone(),
            });
        }
    }
    actions.sort();
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(name: &str, pin: bool) -> Desired {
        Desired {
            name: name.into(),
            pin,
            pull: true,
            priority: 0,
        }
    }

    fn present(names: &[&str], pinned: bool) -> Present {
        Present {
            names: names.iter().map(|s| s.to_string()).collect(),
            pinned,
        }
    }

    #[test]
    fn missing_images_are_warmed_once() {
        let mut obs = Observed {
            pin_supported: true,
            ..Default::default()
        };
        let want = [d("r/a:1", true), d("r/b:1", false)];
        assert_eq!(
            plan(&want, &obs),
            vec![
                Action::Warm {
                    name: "r/a:1".into(),
                    pin: true,
                    priority: 0
                },
                Action::Warm {
                    name: "r/b:1".into(),
                    pin: false,
                    priority: 0
                }
            ]
        );
        obs.in_flight.insert("r/a:1".into());
        assert_eq!(
            plan(&want, &obs),
            vec![Action::Warm {
                name: "r/b:1".into(),
                pin: false,
                priority: 0
            }]
        );
    }

    #[test]
    fn present_images_get_pinned_when_not_yet() {
        let mut obs = Observed {
            pin_supported: true,
            ..Default::default()
        };
        obs.present.insert(
            "r/a:1".into(),
            present(&["r/a:1", "r/a@sha256:x", "sha256:c"], false),
        );
        assert_eq!(
            plan(&[d("r/a:1", true)], &obs),
            vec![Action::Pin {
                name: "r/a:1".into()
            }]
        );
        // Pinned by someone else: leave it.
        obs.present
            .insert("r/a:1".into(), present(&["r/a:1"], true));
        assert!(plan(&[d("r/a:1", true)], &obs).is_empty());
        // Runtime ignores pins: nothing to do.
        obs.pin_supported = false;
        obs.present
            .insert("r/a:1".into(), present(&["r/a:1"], false));
        assert!(plan(&[d("r/a:1", true)], &obs).is_empty());
    }

    #[test]
    fn pins_no_longer_needed_are_released_and_others_kept() {
        let mut obs = Observed {
            pin_supported: true,
            ..Default::default()
        };
        obs.present
            .insert("r/a:1".into(), present(&["r/a:1", "sha256:a"], true));
        obs.pinned_by_us = ["r/a:1", "sha256:a", "r/old:1", "sha256:old"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            plan(&[d("r/a:1", true)], &obs),
            vec![
                Action::Unpin {
                    record: "r/old:1".into()
                },
                Action::Unpin {
                    record: "sha256:old".into()
                }
            ]
        );
        // Desired without pin: its records are unpinned too.
        let acts = plan(&[d("r/a:1", false)], &obs);
        assert_eq!(acts.len(), 4);
    }

    #[test]
    fn grace_keeps_pins_without_pulling() {
        let mut obs = Observed {
            pin_supported: true,
            ..Default::default()
        };
        let grace = Desired {
            name: "r/a:1".into(),
            pin: true,
            pull: false,
            priority: 0,
        };
        // Gone during grace: not pulled again.
        assert!(plan(std::slice::from_ref(&grace), &obs).is_empty());
        // Present and pinned by us: the pin stays.
        obs.present
            .insert("r/a:1".into(), present(&["r/a:1"], true));
        obs.pinned_by_us.insert("r/a:1".into());
        assert!(plan(&[grace], &obs).is_empty());
    }

    #[test]
    fn steady_state_is_quiet() {
        let mut obs = Observed {
            pin_supported: true,
            ..Default::default()
        };
        obs.present
            .insert("r/a:1".into(), present(&["r/a:1", "sha256:a"], true));
        obs.pinned_by_us = ["r/a:1", "sha256:a"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(plan(&[d("r/a:1", true)], &obs).is_empty());
    }
}
