//! HTTP clients with the process's TLS provider.
//!
//! reqwest is built without a TLS crypto provider of its own (see the workspace manifest):
//! rustls uses ring, which the WebRTC stack already needs. Every HTTP client of the project is
//! made through [`client_builder`] or [`client`], which install it first.

/// A reqwest client builder, after installing ring as rustls's process-wide crypto provider
/// (once; a provider installed before stays).
pub fn client_builder() -> reqwest::ClientBuilder {
    // Err only when a provider is already installed, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// A reqwest client with default settings (as `reqwest::Client::new`).
///
/// # Errors
///
/// reqwest's, when its TLS configuration cannot be built.
pub fn client() -> reqwest::Result<reqwest::Client> {
    client_builder().build()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_client_can_be_made_twice() {
        assert!(super::client().is_ok());
        assert!(super::client().is_ok());
    }
}
