//! Simulated client.
