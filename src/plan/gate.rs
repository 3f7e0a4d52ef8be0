//! Scale-up gate decisions (being written).
