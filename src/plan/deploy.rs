//! Sequential deploy state machine (being written).
