//! DeployGroup custom resource types (being written).
