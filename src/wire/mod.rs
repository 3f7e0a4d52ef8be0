//! Wire types: the agent–coordinator link, generated from `link.proto`, and
//! the DeployGroup custom resource.

pub mod deploygroup;

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("prewarm.link.v1");

    // Secrets never reach logs: registry, username and source only.
    impl std::fmt::Debug for RegistryCredential {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let redacted = |s: &str| if s.is_empty() { "" } else { "<redacted>" };
            f.debug_struct("RegistryCredential")
                .field("registry", &self.registry)
                .field("username", &self.username)
                .field("password", &redacted(&self.password))
                .field("identity_token", &redacted(&self.identity_token))
                .field("source", &self.source)
                .finish()
        }
    }
}

/// Limits every message is checked against, on both ends.
pub mod limits {
    /// Largest encoded message accepted (a node with thousands of images
    /// fits comfortably).
    pub const MAX_MESSAGE_BYTES: usize = 4 << 20;
    pub const MAX_IMAGES: usize = 20_000;
    pub const MAX_WINDOWS: usize = 1_000;
    pub const MAX_LABELS: usize = 512;
    /// Registry hosts in one window's `missing`.
    pub const MAX_REGISTRIES: usize = 64;
    pub const MAX_NAME_LEN: usize = 1_024;
}
