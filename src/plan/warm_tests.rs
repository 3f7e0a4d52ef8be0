use super::*;

const HOLD: HoldPolicy = HoldPolicy {
    period: Duration::from_secs(600),
};

fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
}

fn d(name: &str, pin: bool) -> Desired {
    Desired {
        name: name.into(),
        pin,
        pull: true,
        priority: 0,
        hold: false,
    }
}

/// Desired because an intent names it.
fn intent(name: &str) -> Desired {
    Desired {
        hold: true,
        ..d(name, true)
    }
}

fn present(names: &[&str], pinned: bool) -> Present {
    Present {
        names: names.iter().map(|s| s.to_string()).collect(),
        pinned,
    }
}

fn names(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn acts(want: &[Desired], obs: &Observed) -> Vec<Action> {
    plan(want, obs, &HOLD, t(0)).actions
}

fn unpin(r: &str) -> Action {
    Action::Unpin { record: r.into() }
}

/// r/a:1 present, pinned by us on all three records.
fn ours_a() -> Observed {
    let mut obs = Observed {
        pin_supported: true,
        ..Default::default()
    };
    obs.present.insert(
        "r/a:1".into(),
        present(&["r/a:1", "r/a@sha256:t", "sha256:c"], true),
    );
    obs.pinned_by_us = names(&["r/a:1", "r/a@sha256:t", "sha256:c"]);
    obs
}

#[test]
fn missing_images_are_warmed_once() {
    let mut obs = Observed {
        pin_supported: true,
        ..Default::default()
    };
    let want = [d("r/a:1", true), d("r/b:1", false)];
    assert_eq!(
        acts(&want, &obs),
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
        acts(&want, &obs),
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
        acts(&[d("r/a:1", true)], &obs),
        vec![Action::Pin {
            name: "r/a:1".into(),
            hold_until: None
        }]
    );
    // Pinned by someone else: leave it.
    obs.present
        .insert("r/a:1".into(), present(&["r/a:1"], true));
    assert!(acts(&[d("r/a:1", true)], &obs).is_empty());
    assert!(acts(&[intent("r/a:1")], &obs).is_empty());
    // Runtime ignores pins: nothing to do.
    obs.pin_supported = false;
    obs.present
        .insert("r/a:1".into(), present(&["r/a:1"], false));
    assert!(acts(&[d("r/a:1", true)], &obs).is_empty());
}

#[test]
fn pins_no_longer_needed_are_released_and_others_kept() {
    let mut obs = Observed {
        pin_supported: true,
        ..Default::default()
    };
    obs.present
        .insert("r/a:1".into(), present(&["r/a:1", "sha256:a"], true));
    obs.pinned_by_us = names(&["r/a:1", "sha256:a", "r/old:1", "sha256:old"]);
    assert_eq!(
        acts(&[d("r/a:1", true)], &obs),
        vec![unpin("r/old:1"), unpin("sha256:old")]
    );
    // Desired without pin: its records are unpinned too.
    assert_eq!(acts(&[d("r/a:1", false)], &obs).len(), 4);
}

#[test]
fn grace_keeps_pins_without_pulling() {
    let mut obs = Observed {
        pin_supported: true,
        ..Default::default()
    };
    let grace = Desired {
        pull: false,
        ..d("r/a:1", true)
    };
    // Gone during grace: not pulled again.
    assert!(acts(std::slice::from_ref(&grace), &obs).is_empty());
    // Present and pinned by us: the pin stays.
    obs.present
        .insert("r/a:1".into(), present(&["r/a:1"], true));
    obs.pinned_by_us.insert("r/a:1".into());
    assert!(acts(&[grace], &obs).is_empty());
}

#[test]
fn steady_state_is_quiet() {
    let obs = ours_a();
    assert!(acts(&[d("r/a:1", true)], &obs).is_empty());
}

#[test]
fn an_intent_pins_with_a_hold_and_renews_it_only_when_running_low() {
    let mut obs = ours_a();
    obs.present
        .insert("r/a:1".into(), present(&["r/a:1", "sha256:c"], false));
    obs.pinned_by_us.clear();
    // Not pinned yet: the pin carries a hold of 1.5 periods.
    assert_eq!(
        acts(&[intent("r/a:1")], &obs),
        vec![Action::Pin {
            name: "r/a:1".into(),
            hold_until: Some(t(900))
        }]
    );
    // Pinned by the pull (no hold label yet): the hold is written.
    let mut obs = ours_a();
    let hold = Action::Hold {
        name: "r/a:1".into(),
        until: t(900),
    };
    assert_eq!(acts(&[intent("r/a:1")], &obs), vec![hold.clone()]);
    // A hold on only some records counts as missing.
    obs.holds.insert("r/a:1".into(), t(900));
    assert_eq!(acts(&[intent("r/a:1")], &obs), vec![hold.clone()]);
    for r in ["r/a@sha256:t", "sha256:c"] {
        obs.holds.insert(r.into(), t(900));
    }
    // More than a period left: no write, for half a period.
    for now in [0, 100, 299] {
        assert!(plan(&[intent("r/a:1")], &obs, &HOLD, t(now))
            .actions
            .is_empty());
    }
    // Less than a period left: renewed.
    assert_eq!(
        plan(&[intent("r/a:1")], &obs, &HOLD, t(301)).actions,
        vec![Action::Hold {
            name: "r/a:1".into(),
            until: t(1201)
        }]
    );
    // Config and window images carry no hold.
    obs.holds.clear();
    assert!(acts(&[d("r/a:1", true)], &obs).is_empty());
}

#[test]
fn the_pin_outlives_its_intent_until_the_hold_runs_out() {
    let mut obs = ours_a();
    for r in ["r/a:1", "r/a@sha256:t", "sha256:c"] {
        obs.holds.insert(r.into(), t(900));
    }
    // The intent ended: nothing desires r/a:1 any more.
    let p = plan(&[], &obs, &HOLD, t(10));
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.held, obs.pinned_by_us);
    assert_eq!(p.next_expiry, Some(t(900)));
    // At the hold's end, every record is unpinned.
    let p = plan(&[], &obs, &HOLD, t(900));
    assert_eq!(
        p.actions,
        vec![unpin("r/a:1"), unpin("r/a@sha256:t"), unpin("sha256:c")]
    );
    assert!(p.held.is_empty());
    assert_eq!(p.next_expiry, None);
}

#[test]
fn a_container_using_the_image_keeps_the_pin_after_the_hold() {
    let mut obs = ours_a();
    obs.holds.insert("r/a:1".into(), t(-1));
    // The intent ended and its hold ran out, but a container started
    // from the image (by id) exists on the node.
    let records: Vec<(String, String)> = [
        ("r/a:1", "sha256:t"),
        ("r/a@sha256:t", "sha256:t"),
        ("sha256:c", "sha256:t"),
        ("r/b:1", "sha256:u"),
    ]
    .iter()
    .map(|(n, t)| (n.to_string(), t.to_string()))
    .collect();
    obs.in_use = records_in_use(&records, &names(&["sha256:c"]));
    assert_eq!(obs.in_use, names(&["r/a:1", "r/a@sha256:t", "sha256:c"]));
    let p = plan(&[], &obs, &HOLD, t(0));
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.held.len(), 3);
    assert_eq!(p.next_expiry, None, "an expired hold does not wake anyone");
    // The container is gone: unpinned.
    obs.in_use.clear();
    assert_eq!(plan(&[], &obs, &HOLD, t(0)).actions.len(), 3);
}

#[test]
fn containers_name_images_by_tag_digest_or_id() {
    let records: Vec<(String, String)> = [
        ("r/a:1", "sha256:t"),
        ("sha256:c", "sha256:t"),
        ("r/b:1", "sha256:u"),
    ]
    .iter()
    .map(|(n, t)| (n.to_string(), t.to_string()))
    .collect();
    assert_eq!(
        records_in_use(&records, &names(&["r/a:1"])),
        names(&["r/a:1", "sha256:c"])
    );
    assert_eq!(
        records_in_use(&records, &names(&["r/b:1", "other"])),
        names(&["r/b:1"])
    );
    assert!(records_in_use(&records, &names(&["r/b:2"])).is_empty());
}

/// An intent withdrawn and republished a reconcile later (a coordinator
/// failover, a gate release then a rollout's intent): the pin never drops.
#[test]
fn a_withdrawn_and_republished_intent_does_not_flap_the_pin() {
    let mut obs = ours_a();
    let mut changes = Vec::new();
    let wanted = [true, false, true, false, false, true];
    for (i, want) in wanted.iter().enumerate() {
        let now = t(i as i64);
        let desired: Vec<Desired> = if *want { vec![intent("r/a:1")] } else { vec![] };
        let p = plan(&desired, &obs, &HOLD, now);
        // Carry the actions out on the observed state, as the agent does.
        for a in &p.actions {
            match a {
                Action::Hold { until, .. } => {
                    for r in obs.pinned_by_us.clone() {
                        obs.holds.insert(r, *until);
                    }
                    changes.push("hold");
                }
                Action::Unpin { record } => {
                    obs.pinned_by_us.remove(record);
                    changes.push("unpin");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    // One hold written when first asked for; no unpin, no second pin.
    assert_eq!(changes, vec!["hold"]);
}
