//! Test support for Cascade.
