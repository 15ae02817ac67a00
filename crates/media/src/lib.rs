//! Media plane.
