//! Sans-IO forwarding core.
