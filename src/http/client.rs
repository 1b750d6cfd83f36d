//! Every outgoing HTTP client of the project (the CLI, the Events API
//! client of routers, workers and providers, the benches): plain HTTP and
//! `https://` with rustls, trusting the system's roots plus the PEM
//! certificates in `SSL_CERT_FILE` (a private CA, say).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use std::sync::{Arc, OnceLock};

/// The system bundles looked at besides what `rustls-native-certs` finds
/// (which, with `SSL_CERT_FILE` set, reads only that file).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

fn add_pem_file(roots: &mut RootCertStore, path: &str) -> usize {
    let Ok(iter) = CertificateDer::pem_file_iter(path) else {
        return 0;
    };
    iter.filter_map(Result::ok)
        .filter(|c| roots.add(c.clone()).is_ok())
        .count()
}

/// The system roots plus `SSL_CERT_FILE`.
pub fn roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    for path in SYSTEM_BUNDLES {
        add_pem_file(&mut roots, path);
    }
    if let Some(file) = std::env::var("SSL_CERT_FILE")
        .ok()
        .filter(|f| !f.is_empty())
    {
        if add_pem_file(&mut roots, &file) == 0 {
            tracing::warn!(file = %file, "SSL_CERT_FILE holds no PEM certificate this client can use");
        }
    }
    roots
}

/// The TLS settings of every client (built once per process).
pub fn tls_config() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut config = ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots())
            .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        })
        .clone()
}

/// An awc client that speaks `https://` too: with `timeout` per request,
/// or none (the caller bounds its own waits).
pub fn client(timeout: Option<std::time::Duration>) -> awc::Client {
    let builder = awc::Client::builder().connector(awc::Connector::new().rustls_0_23(tls_config()));
    match timeout {
        Some(t) => builder.timeout(t).finish(),
        None => builder.disable_timeout().finish(),
    }
}
