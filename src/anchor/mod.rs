//! Anchoring checkpoints outside the operator's reach: witnesses and timestamp authorities.

pub mod tsa;
