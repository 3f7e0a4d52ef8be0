use super::*;

fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
}

fn intent(id: &str, images: &[&str], priority: i64, deadline: i64) -> Intent {
    Intent {
        id: id.into(),
        images: images.iter().map(|s| s.to_string()).collect(),
        priority,
        deadline_unix: deadline,
        ..Default::default()
    }
}

const HOUR: Duration = Duration::from_secs(3600);

fn names(a: &Applicable) -> Vec<&str> {
    a.images.keys().map(String::as_str).collect()
}

#[test]
fn no_deadline_ends_max_deadline_after_receipt() {
    let all = vec![intent("forever", &["r.example/a:1"], 0, 0)];
    let got = receipts(&Receipts::new(), &all, t(0));
    // Received at t(0); resent unchanged later keeps that receipt.
    let got = receipts(&got, &all, t(100));
    assert_eq!(got[&("forever".to_string(), 0)], t(0));
    let labels = BTreeMap::new();
    let at = |now| applicable(&all, &got, "n1", &labels, HOUR, now);
    assert_eq!(names(&at(t(3599))), ["r.example/a:1"]);
    assert_eq!(at(t(3599)).next_end, Some(t(3600)));
    assert!(
        at(t(3600)).images.is_empty(),
        "ends at receipt + maxDeadline"
    );
    assert!(at(t(7 * 86_400)).images.is_empty());
}

#[test]
fn far_deadlines_are_capped_and_renewals_are_new_receipts() {
    let far = t(0).timestamp() + 30 * 86_400;
    let first = vec![intent("r", &["r.example/a:1"], 0, far)];
    let rec = receipts(&Receipts::new(), &first, t(0));
    let labels = BTreeMap::new();
    assert!(applicable(&first, &rec, "n1", &labels, HOUR, t(3600))
        .images
        .is_empty());
    // The coordinator renews the deadline at t(1800): a new receipt.
    let renewed = vec![intent("r", &["r.example/a:1"], 0, far + 60)];
    let rec = receipts(&rec, &renewed, t(1800));
    assert_eq!(rec.len(), 1, "the old deadline's receipt is dropped");
    let a = applicable(&renewed, &rec, "n1", &labels, HOUR, t(3600));
    assert_eq!(names(&a), ["r.example/a:1"]);
    assert_eq!(a.next_end, Some(t(1800 + 3600)));
}

#[test]
fn past_and_near_deadlines_hold_as_sent() {
    let now = t(0).timestamp();
    let all = vec![
        intent("past", &["r.example/a:1"], 0, now - 1),
        intent("soon", &["r.example/b:1"], 0, now + 60),
    ];
    let rec = receipts(&Receipts::new(), &all, t(0));
    let a = applicable(&all, &rec, "n1", &BTreeMap::new(), HOUR, t(0));
    assert_eq!(names(&a), ["r.example/b:1"]);
    assert_eq!(a.next_end, Some(t(60)));
    assert_eq!(effective_end(now + 60, t(0), HOUR), t(60));
    assert_eq!(effective_end(i64::MAX, t(0), HOUR), t(3600));
    assert_eq!(effective_end(i64::MIN, t(0), HOUR), t(3600));
}

#[test]
fn selector_nodes_priority_and_bad_images() {
    let deadline = t(0).timestamp() + 600;
    let mut other_pool = intent("other-pool", &["r.example/x:1"], 0, deadline);
    other_pool.node_selector = [("pool".into(), "sys".into())].into_iter().collect();
    let mut other_node = intent("other-node", &["r.example/y:1"], 0, deadline);
    other_node.nodes = vec!["n2".into()];
    let mut this_node = intent("this-node", &["r.example/a:1"], 5, deadline);
    this_node.nodes = vec!["n1".into()];
    let all = vec![
        intent("low", &["r.example/a:1", "Bad/Name"], 1, deadline),
        this_node,
        other_pool,
        other_node,
    ];
    let labels = [("pool".to_string(), "int".to_string())]
        .into_iter()
        .collect();
    let rec = receipts(&Receipts::new(), &all, t(0));
    let a = applicable(&all, &rec, "n1", &labels, HOUR, t(0));
    assert_eq!(names(&a), ["r.example/a:1"]);
    let img = &a.images["r.example/a:1"];
    assert_eq!((img.priority, img.intent.as_str()), (5, "this-node"));
    assert_eq!(a.bad.len(), 1);
    assert_eq!(a.bad[0].0, "low");
    assert!(a.bad[0].1.contains("Bad/Name"), "{:?}", a.bad);
}

fn wanted(list: &[(&str, i64)]) -> BTreeMap<String, IntentImage> {
    list.iter()
        .map(|(n, p)| {
            let image: ImageRef = n.parse().unwrap();
            let img = IntentImage {
                image,
                priority: *p,
                intent: format!("i-{n}"),
            };
            (img.image.cri_name(), img)
        })
        .collect()
}

fn limits(max_images: usize, max_bytes: u64) -> IntentLimits {
    IntentLimits {
        max_images,
        max_bytes: crate::config::ByteSize(max_bytes),
        ..IntentLimits::default()
    }
}

fn room(present: &[(&str, u64)], above_floor: bool) -> Room {
    Room {
        present: present.iter().map(|(n, s)| (n.to_string(), *s)).collect(),
        above_floor,
    }
}

fn taken(a: &Admission) -> Vec<&str> {
    a.images.keys().map(String::as_str).collect()
}

#[test]
fn the_number_of_intent_images_is_capped_by_priority() {
    let w = wanted(&[
        ("r.example/a:1", 1),
        ("r.example/b:1", 9),
        ("r.example/c:1", 5),
    ]);
    let a = admit(&w, &limits(2, 0), &room(&[], true));
    assert_eq!(taken(&a), ["r.example/b:1", "r.example/c:1"]);
    assert_eq!(a.refused["r.example/a:1"], Refusal::MaxImages);
}

#[test]
fn present_images_keep_their_place_at_equal_priority() {
    let w = wanted(&[("r.example/a:1", 0), ("r.example/b:1", 0)]);
    let a = admit(&w, &limits(1, 0), &room(&[("r.example/b:1", 10)], true));
    assert_eq!(taken(&a), ["r.example/b:1"]);
}

#[test]
fn intent_bytes_are_capped() {
    let w = wanted(&[
        ("r.example/a:1", 3),
        ("r.example/b:1", 2),
        ("r.example/c:1", 1),
        ("r.example/d:1", 0),
    ]);
    let present = [
        ("r.example/a:1", 60),
        ("r.example/b:1", 50),
        ("r.example/c:1", 40),
    ];
    let a = admit(&w, &limits(10, 100), &room(&present, true));
    assert_eq!(taken(&a), ["r.example/a:1", "r.example/c:1"]);
    assert_eq!(a.bytes, 100);
    assert_eq!(a.refused["r.example/b:1"], Refusal::MaxBytes);
    // The budget is spent: a missing image is not pulled either.
    assert_eq!(a.refused["r.example/d:1"], Refusal::MaxBytes);
    // With room left, a missing image is pulled (its size counts once present).
    let a = admit(&w, &limits(10, 101), &room(&present, true));
    assert!(a.images.contains_key("r.example/d:1"));
    // 0: no byte limit.
    let a = admit(&w, &limits(10, 0), &room(&present, true));
    assert_eq!(a.images.len(), 4);
}

#[test]
fn nothing_is_pulled_for_intents_at_the_disk_floor() {
    let w = wanted(&[("r.example/a:1", 0), ("r.example/b:1", 0)]);
    let a = admit(&w, &limits(10, 0), &room(&[("r.example/a:1", 5)], false));
    assert_eq!(taken(&a), ["r.example/a:1"], "a present image stays pinned");
    assert_eq!(a.refused["r.example/b:1"], Refusal::DiskFloor);
}
