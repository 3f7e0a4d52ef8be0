//! Every image the agent wants on its node, merged from its three sources:
//! config images, windows warming, active or in grace, and the
//! coordinator's intents.

use std::collections::BTreeMap;

use crate::config::AgentConfig;
use crate::plan::warm::Desired;
use crate::plan::windows::DesiredImage;

/// The merged desired images, and per image the windows and intents
/// (`intent:<id>`) that want it. `intents` maps CRI names to the highest
/// priority among the intents naming them and one of their ids.
pub fn merge(
    cfg: &AgentConfig,
    windows: &[DesiredImage],
    intents: &BTreeMap<String, (i64, String)>,
) -> (Vec<Desired>, BTreeMap<String, Vec<String>>) {
    let mut desired: BTreeMap<String, Desired> = BTreeMap::new();
    let mut reasons: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in &cfg.images {
        let name = e.image.cri_name();
        desired.insert(
            name.clone(),
            Desired {
                name,
                pin: e.pin,
                pull: true,
                priority: 0,
                hold: false,
            },
        );
    }
    for d in windows {
        let entry = desired.entry(d.name.clone()).or_insert(Desired {
            name: d.name.clone(),
            pin: false,
            pull: false,
            priority: i64::MIN,
            hold: false,
        });
        entry.pin |= d.pin;
        entry.pull |= d.pull;
        entry.priority = entry.priority.max(d.priority);
        reasons.insert(d.name.clone(), d.windows.clone());
    }
    for (name, (priority, id)) in intents {
        let entry = desired.entry(name.clone()).or_insert(Desired {
            name: name.clone(),
            pin: true,
            pull: true,
            priority: *priority,
            hold: true,
        });
        entry.pull = true;
        entry.hold = true;
        entry.priority = entry.priority.max(*priority);
        reasons
            .entry(name.clone())
            .or_default()
            .push(format!("intent:{id}"));
    }
    (desired.into_values().collect(), reasons)
}
