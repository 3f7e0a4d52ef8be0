//! The coordinator's deploy-group rights are per namespace: ClusterRole
//! `prewarm-deploygroup` is bound nowhere by the install, and a namespace
//! that runs DeployGroups grants it with a RoleBinding. Without one, the API
//! server refuses (403) and the group's status message says which
//! RoleBinding is missing, instead of the group stalling in silence.

use super::*;

/// The ClusterRole a namespace binds for deploy groups (daemonset/).
pub const DEPLOYGROUP_ROLE: &str = "prewarm-deploygroup";

/// Why an observation is missing.
pub(super) enum Unobserved {
    /// The API failed; retried on the next reconcile.
    Api,
    /// The namespace does not grant the coordinator deploy-group rights.
    Forbidden(String),
}

/// The status message for a refusal in namespace `ns`; None when `e` is not
/// a 403.
pub(super) fn missing_grant(e: &kube::Error, ns: &str) -> Option<String> {
    let kube::Error::Api(s) = e else {
        return None;
    };
    if s.code != 403 {
        return None;
    }
    let subject = service_account(&s.message)
        .unwrap_or_else(|| "the coordinator's ServiceAccount".to_string());
    Some(format!(
        "no RoleBinding in namespace {ns} grants ClusterRole {DEPLOYGROUP_ROLE} to {subject}; \
         create one to run DeployGroups here (config/integrations-deploygroup.yaml): {}",
        s.message
    ))
}

/// `ServiceAccount <ns>/<name>` of the refused user in the API server's
/// message (`User "system:serviceaccount:<ns>:<name>" cannot ...`).
fn service_account(message: &str) -> Option<String> {
    let user = message.split("User \"").nth(1)?.split('"').next()?;
    let rest = user.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    Some(format!("ServiceAccount {ns}/{name}"))
}

impl Deploys {
    /// Records a refusal: the group's status message (the rest of the
    /// status unchanged) and one Warning Event; nothing is decided or
    /// warmed until the RoleBinding exists.
    pub(super) async fn refused(
        &mut self,
        key: &Key,
        obj: &DynamicObject,
        status: &DeployGroupStatus,
        message: String,
    ) {
        self.intents.remove(key);
        if status.message == message {
            return;
        }
        self.event_on_group(key, obj, true, "Forbidden", &message)
            .await;
        let mut st = status.clone();
        st.message = message;
        if let Ok(v) = serde_json::to_value(&st) {
            self.write_status(key, obj, v).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, message: &str) -> kube::Error {
        let status: kube::core::Status = serde_json::from_value(json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": message, "code": code}))
        .unwrap();
        kube::Error::Api(Box::new(status))
    }

    #[test]
    fn a_refusal_names_the_missing_role_binding() {
        let e = api_error(
            403,
            "scaledobjects.keda.sh is forbidden: User \"system:serviceaccount:ops:pw\" cannot list",
        );
        let m = missing_grant(&e, "erp").unwrap();
        assert!(
            m.starts_with("no RoleBinding in namespace erp grants ClusterRole prewarm-deploygroup to ServiceAccount ops/pw;"),
            "{m}"
        );
        // Another user (not a ServiceAccount): named generically.
        let m = missing_grant(&api_error(403, "forbidden: User \"alice\""), "erp").unwrap();
        assert!(m.contains("to the coordinator's ServiceAccount;"), "{m}");
        assert_eq!(missing_grant(&api_error(404, "not found"), "erp"), None);
    }
}
