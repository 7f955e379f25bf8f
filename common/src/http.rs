//! The outgoing HTTP client of the worker's HTTP sensors and the
//! controller's notifier: rustls (ring) verifying servers with the
//! platform's CA certificates, and no redirects (a redirect would resend a
//! secret header, or poke another URL than the one configured).

use std::sync::Arc;

use crate::error::error_chain;

/// A client, and why it cannot verify HTTPS servers, if it cannot.
#[derive(Debug)]
pub struct HttpClient {
    pub client: reqwest::Client,
    /// Set when no CA certificates were found: plain HTTP still works,
    /// HTTPS fails to verify any server.
    pub tls_problem: Option<String>,
}

/// The client of a component that may never need one, built the first
/// time it is asked for, on a blocking thread (it reads the system's CA
/// certificates), and shared by its clones.
#[derive(Debug, Clone)]
pub struct LazyClient {
    user_agent: &'static str,
    cell: Arc<tokio::sync::OnceCell<Result<HttpClient, String>>>,
}

impl LazyClient {
    pub fn new(user_agent: &'static str) -> Self {
        Self {
            user_agent,
            cell: Arc::default(),
        }
    }

    /// The client, or why it cannot be built. `built` sees the outcome of
    /// the one build, so that the caller can log it once.
    pub async fn get(
        &self,
        built: impl FnOnce(&Result<HttpClient, String>),
    ) -> Result<&HttpClient, &str> {
        let user_agent = self.user_agent;
        self.cell
            .get_or_init(|| async move {
                let result = tokio::task::spawn_blocking(move || build_client(user_agent))
                    .await
                    .unwrap_or_else(|error| Err(format!("cannot build the HTTP client: {error}")));
                built(&result);
                result
            })
            .await
            .as_ref()
            .map_err(String::as_str)
    }
}

/// Builds the client. It reads the system's CA certificates: call it on a
/// blocking thread, or use [`LazyClient`].
pub fn build_client(user_agent: &str) -> Result<HttpClient, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("cannot configure TLS: {error}"))?;
    let (tls, tls_problem) = match rustls_platform_verifier::Verifier::new(provider) {
        Ok(verifier) => (
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth(),
            None,
        ),
        Err(error) => (
            builder
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
            Some(error.to_string()),
        ),
    };
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(user_agent)
        .build()
        .map_err(|error| format!("cannot build the HTTP client: {}", error_chain(&error)))?;
    Ok(HttpClient {
        client,
        tls_problem,
    })
}
