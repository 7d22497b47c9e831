//! Witnesses: see tests below.
