//! Split views (placeholder).
