//! Matrix side of the Cascade focus.
