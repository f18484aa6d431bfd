//! TLS with rustls (ring provider), TLS 1.2 and 1.3 only.
//!
//! Listener side: a certificate store that picks a certificate by SNI and can
//! be reloaded from disk without dropping connections (a broken new file keeps
//! the old certificate serving), optional client-certificate verification,
//! and the verified peer identity (URI SAN such as a SPIFFE id, else the
//! subject's CN). Upstream side: client configs with a CA, SNI override,
//! client certificate for mTLS, or (explicitly) no verification.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring as provider, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::config::schema::{ClusterTls, ListenerTls};

pub fn crypto() -> Arc<CryptoProvider> {
    Arc::new(provider::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A PEM file's bytes: only a regular file of bounded size is read, so a
/// path such as `/dev/urandom` fails at once instead of reading forever.
fn pem(path: &Path) -> Result<Vec<u8>, String> {
    crate::config::files::read_regular(path, crate::config::files::MAX_PEM_BYTES)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(&pem(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(&pem(path)?).map_err(|e| format!("{}: {e}", path.display()))
}

fn roots(path: &Path) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for cert in certs(path)? {
        store.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(store)
}

/// A certificate chain and key read from PEM files, checked to belong together.
pub fn certified_key(cert: &Path, key_path: &Path) -> Result<CertifiedKey, String> {
    let chain = certs(cert)?;
    let key = key(key_path)?;
    let signing = provider::sign::any_supported_type(&key).map_err(|e| format!("{}: {e}", key_path.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| format!("{} and {}: {e}", cert.display(), key_path.display()))?;
    Ok(certified)
}

/// One certificate of a listener: files, server names, the loaded key.
struct Entry {
    cert: PathBuf,
    key: PathBuf,
    names: Vec<String>,
    current: ArcSwap<CertifiedKey>,
}

/// The certificates of one listener, chosen by SNI (first entry is the
/// default). Reloadable in place.
pub struct CertStore {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("certificates", &self.entries.len())
            .finish()
    }
}

impl CertStore {
    pub fn load(tls: &ListenerTls, base: &Path) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (cert, key, names) in tls.certificate_files() {
            let (cert, key) = (base.join(cert), base.join(key));
            let loaded = certified_key(&cert, &key)?;
            entries.push(Entry {
                cert,
                key,
                names,
                current: ArcSwap::from_pointee(loaded),
            });
        }
        if entries.is_empty() {
            return Err("tls needs cert and key, or certificates".into());
        }
        Ok(Self { entries })
    }

    /// Files to watch for rotation.
    pub fn files(&self) -> Vec<PathBuf> {
        self.entries
            .iter()
            .flat_map(|e| [e.cert.clone(), e.key.clone()])
            .collect()
    }

    /// Re-reads every certificate; a pair that fails to load keeps its old
    /// certificate. Returns how many changed, and the errors.
    pub fn reload(&self) -> (usize, Vec<String>) {
        let mut changed = 0;
        let mut errors = Vec::new();
        for e in &self.entries {
            match certified_key(&e.cert, &e.key) {
                Ok(fresh) if fresh.cert != e.current.load().cert => {
                    tracing::info!(cert = %e.cert.display(), "certificate reloaded");
                    e.current.store(Arc::new(fresh));
                    changed += 1;
                }
                Ok(_) => {}
                Err(err) => errors.push(err),
            }
        }
        (changed, errors)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello
            .server_name()
            .and_then(|sni| {
                self.entries
                    .iter()
                    .find(|e| e.names.iter().any(|n| matches_name(n, sni)))
            })
            .or_else(|| self.entries.first())?;
        Some(chosen.current.load_full())
    }
}

/// `*.example.com` matches one label, like certificate wildcards.
fn matches_name(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(suffix)),
        None => pattern.eq_ignore_ascii_case(name),
    }
}

/// A listener's server config; `alpn` lists the protocols to offer.
pub fn server_config(
    tls: &ListenerTls,
    store: Arc<CertStore>,
    base: &Path,
    alpn: &[&[u8]],
) -> Result<ServerConfig, String> {
    let builder = ServerConfig::builder_with_provider(crypto())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| e.to_string())?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&base.join(ca))?), crypto());
            let verifier = if tls.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| e.to_string())?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(store);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A cluster's client config. `alpn` lists the protocols to ask for.
pub fn client_config(tls: &ClusterTls, base: &Path, alpn: &[&[u8]]) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(crypto())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| e.to_string())?;
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(crypto())))
    } else {
        let roots = match &tls.ca {
            Some(ca) => roots(&base.join(ca))?,
            None => return Err("tls.ca is required unless insecure_skip_verify is true".into()),
        };
        builder.with_root_certificates(roots)
    };
    let mut config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key_path)) => builder
            .with_client_auth_cert(certs(&base.join(cert))?, key(&base.join(key_path))?)
            .map_err(|e| format!("client certificate: {e}"))?,
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("tls.cert and tls.key go together".into()),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A client config for plain-text clusters: never used to handshake, but the
/// pooled client's connector type needs one.
pub fn unused_client_config() -> ClientConfig {
    ClientConfig::builder_with_provider(crypto())
        .with_protocol_versions(VERSIONS)
        .map(|b| b.with_root_certificates(RootCertStore::empty()).with_no_client_auth())
        .unwrap_or_else(|_| {
            ClientConfig::builder()
                .with_root_certificates(RootCertStore::empty())
                .with_no_client_auth()
        })
}

/// `insecure_skip_verify: true`: accepts any server certificate. Signatures
/// are still checked so the handshake itself is sound.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The verified identity of a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// URI SAN (e.g. a SPIFFE id), else the subject's CN.
    pub id: String,
    /// `x-forwarded-client-cert` in Envoy's format.
    pub xfcc: String,
}

impl PeerIdentity {
    pub fn from_der(der: &[u8]) -> Option<Self> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let uri = cert.subject_alternative_name().ok().flatten().and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
        });
        let subject = cert.subject().to_string();
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        let hash = ring::digest::digest(&ring::digest::SHA256, der);
        let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let mut xfcc = format!("Hash={hex};Subject=\"{}\"", subject.replace('"', "\\\""));
        if let Some(uri) = &uri {
            xfcc.push_str(&format!(";URI={uri}"));
        }
        Some(Self {
            id: uri.or(cn).unwrap_or(subject),
            xfcc,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_names_match_one_label() {
        assert!(matches_name("*.example.com", "api.example.com"));
        assert!(!matches_name("*.example.com", "a.b.example.com"));
        assert!(!matches_name("*.example.com", "example.com"));
        assert!(matches_name("Example.com", "example.COM"));
    }

    #[test]
    fn identity_prefers_uri_san_then_cn() {
        let mut params = rcgen::CertificateParams::new(vec!["svc.local".to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "client-a");
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://cluster.local/ns/x/sa/y".try_into().unwrap(),
        ));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let id = PeerIdentity::from_der(cert.der()).unwrap();
        assert_eq!(id.id, "spiffe://cluster.local/ns/x/sa/y");
        assert!(id.xfcc.starts_with("Hash="), "{}", id.xfcc);
        assert!(id.xfcc.contains("Subject=\"CN=client-a\""), "{}", id.xfcc);
        assert!(
            id.xfcc.ends_with(";URI=spiffe://cluster.local/ns/x/sa/y"),
            "{}",
            id.xfcc
        );

        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "only-cn");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(PeerIdentity::from_der(cert.der()).unwrap().id, "only-cn");
    }
}
