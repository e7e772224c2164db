//! TLS for both listeners (rustls, the aws-lc-rs provider): `[server.tls]` names PEM files for the
//! certificate chain, its key and, for mutual TLS, the CA that signs client certificates. The files are
//! read at start (an error stops the start) and again on SIGHUP, when a new handshake picks the new
//! certificates up and open connections keep theirs; a reload that fails keeps the old ones.

use crate::config::TlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::{Arc, RwLock};

/// Why the TLS files could not be used. Messages name the config key and the file.
#[derive(Debug, thiserror::Error)]
#[error("server.tls.{key}: {path}: {message}")]
pub struct TlsError {
    key: &'static str,
    path: String,
    message: String,
}

impl TlsError {
    fn new(key: &'static str, path: &Path, message: impl std::fmt::Display) -> Self {
        TlsError { key, path: path.display().to_string(), message: message.to_string() }
    }
}

/// One listener's TLS settings, swapped whole on reload.
pub struct TlsState {
    files: TlsConfig,
    alpn: Vec<Vec<u8>>,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl TlsState {
    /// Reads the files; `alpn` lists the application protocols this listener offers, preferred first.
    pub fn load(files: &TlsConfig, alpn: &[&[u8]]) -> Result<Arc<TlsState>, TlsError> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let config = server_config(files, &alpn)?;
        Ok(Arc::new(TlsState { files: files.clone(), alpn, current: RwLock::new(Arc::new(config)) }))
    }

    /// An acceptor with the current certificates.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self.current.read().unwrap_or_else(|e| e.into_inner());
        tokio_rustls::TlsAcceptor::from(Arc::clone(&config))
    }

    /// Reads the files again; on success new handshakes use them, on failure nothing changes.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = Arc::new(server_config(&self.files, &self.alpn)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::new(key, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(key, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::new(key, path, "no CERTIFICATE block in the file"));
    }
    Ok(certs)
}

fn server_config(files: &TlsConfig, alpn: &[Vec<u8>]) -> Result<rustls::ServerConfig, TlsError> {
    let chain = certs("cert_file", &files.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&files.key_file)
        .map_err(|e| TlsError::new("key_file", &files.key_file, e))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new("cert_file", &files.cert_file, e))?;
    let builder = match &files.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs("client_ca_file", ca)? {
                roots.add(cert).map_err(|e| TlsError::new("client_ca_file", ca, e))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .map_err(|e| TlsError::new("client_ca_file", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::new("key_file", &files.key_file, format!("does not fit cert_file: {e}")))?;
    config.alpn_protocols = alpn.to_vec();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn errors_name_the_key_and_file() {
        let dir = std::env::temp_dir().join(format!("slate-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let good_cert = write(&dir, "cert.pem", &cert.cert.pem());
        let good_key = write(&dir, "key.pem", &cert.signing_key.serialize_pem());
        let empty = write(&dir, "empty.pem", "");
        let other = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        let other_key = write(&dir, "other.pem", &other.signing_key.serialize_pem());

        let files = |c: &Path, k: &Path, ca: Option<&Path>| TlsConfig {
            cert_file: c.into(),
            key_file: k.into(),
            client_ca_file: ca.map(Into::into),
        };
        let state = TlsState::load(&files(&good_cert, &good_key, None), &[b"h2"]).unwrap();
        assert!(state.reload().is_ok());
        assert!(TlsState::load(&files(&good_cert, &good_key, Some(&good_cert)), &[b"h2"]).is_ok());

        let e = TlsState::load(&files(&empty, &good_key, None), &[]).err().unwrap().to_string();
        assert!(e.starts_with("server.tls.cert_file: ") && e.contains("no CERTIFICATE"), "{e}");
        let e = TlsState::load(&files(&good_cert, &empty, None), &[]).err().unwrap().to_string();
        assert!(e.starts_with("server.tls.key_file: "), "{e}");
        let e = TlsState::load(&files(&good_cert, &other_key, None), &[]).err().unwrap().to_string();
        assert!(e.contains("does not fit cert_file"), "{e}");
        let e =
            TlsState::load(&files(&dir.join("missing.pem"), &good_key, None), &[]).err().unwrap().to_string();
        assert!(e.starts_with("server.tls.cert_file: ") && e.contains("missing.pem"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
