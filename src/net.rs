//! HTTP clients: every one is built from here, on one TLS provider (rustls
//! with ring).

/// A client builder with the crate's TLS provider installed.
pub(crate) fn client_builder() -> reqwest::ClientBuilder {
    // One process-wide provider; one already installed serves as well.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// `GET url` with a fresh client (for tools and tests; probes keep one client).
pub async fn get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    client_builder().no_proxy().build()?.get(url).send().await
}
