//! Kubernetes I/O behind small traits. The agent needs its own node's
//! labels (window nodeSelectors); the downward API cannot expose them, so
//! they are read from the API server, with a static source for tests and
//! for running outside a cluster.

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;

#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error("kubernetes client: {0}")]
    Client(String),
    #[error("node {node}: {message}")]
    Node { node: String, message: String },
}

pub type Labels = BTreeMap<String, String>;

/// Where a node's labels come from.
#[async_trait]
pub trait NodeLabels: Send + Sync {
    async fn labels(&self, node: &str) -> Result<Labels, K8sError>;
}

/// Reads labels from the API server (`get nodes/<name>`).
pub struct ApiNodeLabels {
    nodes: Api<Node>,
}

impl ApiNodeLabels {
    pub fn new(client: kube::Client) -> Self {
        Self {
            nodes: Api::all(client),
        }
    }

    /// In-cluster config (or KUBECONFIG) as the kubelet-adjacent pod sees it.
    pub async fn from_env() -> Result<Self, K8sError> {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| K8sError::Client(e.to_string()))?;
        Ok(Self::new(client))
    }
}

#[async_trait]
impl NodeLabels for ApiNodeLabels {
    async fn labels(&self, node: &str) -> Result<Labels, K8sError> {
        let n = self.nodes.get(node).await.map_err(|e| K8sError::Node {
            node: node.to_string(),
            message: match &e {
                kube::Error::Api(s) if s.code == 404 => "no such node".to_string(),
                other => other.to_string(),
            },
        })?;
        Ok(n.metadata.labels.unwrap_or_default())
    }
}

/// Fixed labels: `--node-labels`, tests, or a node outside any cluster.
pub struct StaticNodeLabels(pub Labels);

#[async_trait]
impl NodeLabels for StaticNodeLabels {
    async fn labels(&self, _node: &str) -> Result<Labels, K8sError> {
        Ok(self.0.clone())
    }
}

/// Parses `k=v,k2=v2` (label keys may contain `/` and `.`).
pub fn parse_labels(s: &str) -> Result<Labels, String> {
    let mut out = Labels::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("expected key=value, got {pair:?}"))?;
        let k = k.trim();
        if k.is_empty() || k.len() > 316 || k.contains(char::is_whitespace) {
            return Err(format!("invalid label key {k:?}"));
        }
        out.insert(k.to_string(), v.trim().to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
