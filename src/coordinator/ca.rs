//! Publishes the CA bundle of the coordinator's serving certificate (`ca.crt`
//! of its mounted Secret) as the ConfigMap [`CA_CONFIGMAP`] in the agents'
//! namespace (`--agent-namespace`), the way kube-root-ca.crt is published.
//! Agents mount that
//! ConfigMap, so no node ever reads the Secret with the serving key.
//!
//! Only the leader writes it (one writer: two replicas that see a renewed
//! Secret at different times would otherwise flap it). It re-reads the file
//! every period and writes only when the bundle differs from the
//! ConfigMap's, so a renewed CA reaches the agents and an unchanged one
//! costs one GET.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The ConfigMap agents mount to trust the coordinator.
pub const CA_CONFIGMAP: &str = "prewarm-coordinator-ca";
/// Its key, like the Secret's.
pub const CA_KEY: &str = "ca.crt";
/// How often the leader re-reads the CA file.
pub const PERIOD: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("CA file {path}: {source} (the Secret prewarm-coordinator-tls needs a ca.crt key)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("ConfigMap {name}: {source}")]
    Api { name: String, source: kube::Error },
}

/// Reads `path`: one or more PEM certificates, nothing else.
pub fn read_bundle(path: &Path) -> Result<String, CaError> {
    let text = std::fs::read_to_string(path).map_err(|source| CaError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |message: String| CaError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("holds no PEM CERTIFICATE block".into()));
    }
    Ok(text)
}

/// What to write, given the bundle and the ConfigMap as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaAction {
    Create,
    Patch,
    UpToDate,
}

/// The pure decision.
pub fn decide(bundle: &str, observed: Option<&ConfigMap>) -> CaAction {
    match observed {
        None => CaAction::Create,
        Some(cm) => {
            let current = cm.data.as_ref().and_then(|d| d.get(CA_KEY));
            if current.map(String::as_str) == Some(bundle) {
                CaAction::UpToDate
            } else {
                CaAction::Patch
            }
        }
    }
}

/// The ConfigMap as created.
pub fn configmap(name: &str, bundle: &str) -> ConfigMap {
    let labels = [
        ("app.kubernetes.io/name", "prewarm"),
        ("app.kubernetes.io/part-of", "prewarm"),
        ("app.kubernetes.io/component", "coordinator"),
    ];
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(CA_KEY.to_string(), bundle.to_string())])),
        ..ConfigMap::default()
    }
}

/// Publishes one CA file as one ConfigMap.
pub struct CaPublisher {
    api: Api<ConfigMap>,
    name: String,
    file: PathBuf,
}

impl CaPublisher {
    pub fn new(client: kube::Client, namespace: &str, name: &str, file: PathBuf) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            file,
        }
    }

    /// Reads the file and brings the ConfigMap up to date; returns what it
    /// did.
    pub async fn publish(&self) -> Result<CaAction, CaError> {
        let bundle = read_bundle(&self.file)?;
        let api_err = |source| CaError::Api {
            name: self.name.clone(),
            source,
        };
        let observed = self.api.get_opt(&self.name).await.map_err(api_err)?;
        let action = decide(&bundle, observed.as_ref());
        match action {
            CaAction::Create => {
                let cm = configmap(&self.name, &bundle);
                self.api
                    .create(&PostParams::default(), &cm)
                    .await
                    .map_err(api_err)?;
            }
            CaAction::Patch => {
                let patch = serde_json::json!({"data": {CA_KEY: bundle}});
                self.api
                    .patch(&self.name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .map_err(api_err)?;
            }
            CaAction::UpToDate => {}
        }
        Ok(action)
    }
}

/// While this replica leads, publishes every `period` and at once when it
/// becomes the leader. Logs when the outcome changes, not every round.
pub async fn run(
    publisher: CaPublisher,
    mut is_leader: watch::Receiver<bool>,
    period: Duration,
    cancel: CancellationToken,
) {
    let mut last: Option<String> = None;
    loop {
        if *is_leader.borrow_and_update() {
            let outcome = publisher.publish().await;
            let summary = match &outcome {
                Ok(CaAction::UpToDate) => "up to date".to_string(),
                Ok(a) => format!("{a:?}"),
                Err(e) => e.to_string(),
            };
            match outcome {
                Ok(CaAction::UpToDate) if last.is_none() => {
                    tracing::info!(configmap = %publisher.name, "CA bundle for agents is up to date")
                }
                Ok(CaAction::UpToDate) => {}
                Ok(_) => {
                    tracing::info!(configmap = %publisher.name, file = %publisher.file.display(), "CA bundle for agents published")
                }
                Err(e) if last.as_deref() != Some(summary.as_str()) => {
                    tracing::warn!(configmap = %publisher.name, error = %e, "CA bundle for agents not published; agents cannot verify this coordinator until it is; retrying")
                }
                Err(e) => tracing::debug!(error = %e, "CA bundle still not published"),
            }
            last = Some(summary);
        } else {
            last = None;
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            r = is_leader.changed() => if r.is_err() { return },
            _ = cancel.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::apiserver::MockApi;

    const NS: &str = "prewarm-node";
    const RESOURCE: &str = "api/v1/configmaps";

    fn pem(n: u8) -> String {
        use base64::Engine as _;
        let der = base64::engine::general_purpose::STANDARD.encode([0x30, 0x03, 0x02, 0x01, n]);
        format!("-----BEGIN CERTIFICATE-----\n{der}\n-----END CERTIFICATE-----\n")
    }

    fn publisher(api: &MockApi, file: &Path) -> CaPublisher {
        CaPublisher::new(
            api.coordinator_client(),
            NS,
            CA_CONFIGMAP,
            file.to_path_buf(),
        )
    }

    #[test]
    fn only_a_differing_bundle_is_written() {
        assert_eq!(decide("a", None), CaAction::Create);
        let cm = configmap(CA_CONFIGMAP, "a");
        assert_eq!(decide("a", Some(&cm)), CaAction::UpToDate);
        assert_eq!(decide("b", Some(&cm)), CaAction::Patch);
        assert_eq!(decide("a", Some(&ConfigMap::default())), CaAction::Patch);
    }

    #[test]
    fn the_bundle_must_be_pem_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.crt");
        let err = read_bundle(&file).unwrap_err().to_string();
        assert!(
            err.contains("ca.crt") && err.contains("needs a ca.crt key"),
            "{err}"
        );
        std::fs::write(&file, "").unwrap();
        let err = read_bundle(&file).unwrap_err().to_string();
        assert!(err.contains("no PEM CERTIFICATE"), "{err}");
        std::fs::write(&file, pem(1) + &pem(2)).unwrap();
        assert_eq!(read_bundle(&file).unwrap(), pem(1) + &pem(2));
    }

    #[tokio::test]
    async fn creates_then_patches_on_change_and_is_idempotent() {
        let api = MockApi::new();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.crt");
        let p = publisher(&api, &file);

        // No file yet: nothing written, a clear error.
        assert!(matches!(p.publish().await, Err(CaError::Read { .. })));
        assert!(api.writes().is_empty());

        std::fs::write(&file, pem(1)).unwrap();
        assert_eq!(p.publish().await.unwrap(), CaAction::Create);
        let cm = api.object(RESOURCE, NS, CA_CONFIGMAP).expect("created");
        assert_eq!(cm["data"][CA_KEY], pem(1));
        assert_eq!(
            cm["metadata"]["labels"]["app.kubernetes.io/component"],
            "coordinator"
        );

        assert_eq!(p.publish().await.unwrap(), CaAction::UpToDate);
        assert_eq!(
            api.writes().len(),
            1,
            "an unchanged bundle is not rewritten"
        );

        std::fs::write(&file, pem(2)).unwrap();
        assert_eq!(p.publish().await.unwrap(), CaAction::Patch);
        let w = api.writes();
        assert_eq!(w.len(), 2);
        assert_eq!(w[1].method, "PATCH");
        assert_eq!(
            w[1].path,
            format!("/api/v1/namespaces/{NS}/configmaps/{CA_CONFIGMAP}")
        );
        assert_eq!(
            api.object(RESOURCE, NS, CA_CONFIGMAP).unwrap()["data"][CA_KEY],
            pem(2)
        );
        assert!(api.forbidden().is_empty(), "{:#?}", api.forbidden());
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_leader_publishes() {
        let api = MockApi::new();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.crt");
        std::fs::write(&file, pem(1)).unwrap();
        let (tx, rx) = watch::channel(false);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(publisher(&api, &file), rx, PERIOD, cancel.clone()));
        // Several periods as a follower: no request at all.
        tokio::time::sleep(PERIOD * 3).await;
        assert!(api.requests().is_empty());
        tx.send_replace(true);
        assert!(
            api.wait_for(Duration::from_secs(1), |_| api
                .object(RESOURCE, NS, CA_CONFIGMAP)
                .is_some())
                .await,
            "published at once on becoming the leader"
        );
        // A renewed CA is picked up within a period.
        std::fs::write(&file, pem(2)).unwrap();
        tokio::time::sleep(PERIOD + Duration::from_millis(10)).await;
        assert!(
            api.wait_for(Duration::from_secs(1), |_| api
                .object(RESOURCE, NS, CA_CONFIGMAP)
                .is_some_and(|cm| cm["data"][CA_KEY] == pem(2)))
                .await
        );
        cancel.cancel();
        task.await.unwrap();
    }
}
