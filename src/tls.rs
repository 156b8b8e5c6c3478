//! TLS termination with rustls (aws-lc-rs): certificates chosen by SNI from their SANs
//! (wildcards included; no or unknown SNI gets the first), TLS 1.2/1.3 only, ALPN h2 and
//! http/1.1, optional mTLS, HSTS. Built from files on every load and reload, so a reload picks
//! up rotated certificates for new handshakes while open connections keep theirs; a file that
//! does not load is a reload error and the old certificates stay.

use crate::config::ListenerTls;
use crate::server::listener::ListenerSpec;
use http::HeaderValue;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

/// A listener's compiled TLS settings.
pub struct TlsSettings {
    pub config: Arc<rustls::ServerConfig>,
    /// `Strict-Transport-Security` for every response on this listener.
    pub hsts: Option<HeaderValue>,
}

/// What a verified client certificate says, as headers for the upstream.
#[derive(Debug, Clone)]
pub struct ClientCert {
    pub subject: HeaderValue,
    pub san: Option<HeaderValue>,
}

/// Installs aws-lc-rs as the process's rustls provider, so a dependency that enables ring can
/// never make rustls choose at run time.
pub fn install_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

struct SniResolver {
    certs: Vec<(Arc<CertifiedKey>, CertificateDer<'static>)>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SniResolver({} certificates)", self.certs.len())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = hello
            .server_name()
            .and_then(|n| ServerName::try_from(n).ok())
        {
            for (key, der) in &self.certs {
                let fits = webpki::EndEntityCert::try_from(der)
                    .is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok());
                if fits {
                    return Some(Arc::clone(key));
                }
            }
        }
        self.certs.first().map(|(k, _)| Arc::clone(k))
    }
}

fn resolve_path(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

/// Builds one listener's TLS settings; `fingerprint` is fed every file's contents.
fn build(cfg: &ListenerTls, base: &Path, fingerprint: &mut Sha256) -> Result<TlsSettings, String> {
    install_provider();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut certs = Vec::new();
    for c in &cfg.certificates {
        let cert_path = resolve_path(base, &c.cert_file);
        let key_path = resolve_path(base, &c.key_file);
        let cert_pem = read(&cert_path, "certificate")?;
        let key_pem = read(&key_path, "key")?;
        fingerprint.update(&cert_pem);
        fingerprint.update(&key_pem);
        let (chain, key) = parse_chain_and_key(&cert_pem, &key_pem, &cert_path, &key_path)?;
        let leaf = chain[0].clone();
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| format!("{}: unusable private key: {e}", key_path.display()))?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match().map_err(|e| {
            format!(
                "{} does not belong to {}: {e}",
                key_path.display(),
                cert_path.display()
            )
        })?;
        certs.push((Arc::new(certified), leaf));
    }
    let versions: &[&rustls::SupportedProtocolVersion] = if &*cfg.min_version.value.0 == "1.3" {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match &cfg.client_auth {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let ca_path = resolve_path(base, &ca.ca_file);
            let pem = read(&ca_path, "client CA")?;
            fingerprint.update(&pem);
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("{}: {e}", ca_path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", ca_path.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if ca.required {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }
            .map_err(|e| format!("client CA {}: {e}", ca_path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver { certs }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let hsts = cfg.hsts.as_ref().map(|h| {
        let mut v = format!("max-age={}", h.max_age_s);
        if h.include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if h.preload {
            v.push_str("; preload");
        }
        HeaderValue::from_str(&v).expect("digits and tokens")
    });
    Ok(TlsSettings {
        config: Arc::new(config),
        hsts,
    })
}

/// Every TLS listener's settings, by listener name, and a fingerprint of all the files read
/// (a reload with the same config but rotated files must still swap).
pub fn build_all(
    listeners: &[ListenerSpec],
    source: &str,
) -> Result<(HashMap<String, Arc<TlsSettings>>, String), crate::config::ConfigErrors> {
    let base = Path::new(source)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut fingerprint = Sha256::new();
    let mut out = HashMap::new();
    let mut errors = Vec::new();
    for (i, l) in listeners.iter().enumerate() {
        let Some(tls) = &l.tls else { continue };
        match build(tls, &base, &mut fingerprint) {
            Ok(s) => {
                out.insert(l.name.clone(), Arc::new(s));
            }
            Err(message) => errors.push(crate::config::ConfigError {
                file: source.to_string(),
                line: tls.line,
                key: format!("listeners[{i}].tls"),
                message,
            }),
        }
    }
    if !errors.is_empty() {
        return Err(crate::config::ConfigErrors(errors));
    }
    Ok((out, hex::encode(fingerprint.finalize())))
}

/// The subject (RFC 4514) and SANs of a verified client certificate.
pub fn client_cert(der: &CertificateDer<'_>) -> Option<ClientCert> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let subject = HeaderValue::from_str(&cert.subject().to_string()).ok()?;
    let san = cert.subject_alternative_name().ok().flatten().map(|ext| {
        ext.value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(format!("DNS:{d}")),
                x509_parser::extensions::GeneralName::RFC822Name(e) => Some(format!("email:{e}")),
                x509_parser::extensions::GeneralName::URI(u) => Some(format!("URI:{u}")),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(",")
    });
    Some(ClientCert {
        subject,
        san: san.and_then(|s| HeaderValue::from_str(&s).ok()),
    })
}

/// The CA certificates of a PEM file, as a root store.
pub fn load_roots(path: &str) -> Result<rustls::RootCertStore, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{path}: {e}"))?;
        roots.add(cert).map_err(|e| format!("{path}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{path}: no certificate in the file"));
    }
    Ok(roots)
}

/// The client side of `protocol: https` upstreams: the server's name is verified against the
/// configured CA (or the Mozilla roots); ALPN offers http/1.1.
/// A PEM certificate chain (at least one certificate) and its PEM private key.
fn parse_chain_and_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_path: &std::path::Path,
    key_path: &std::path::Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", cert_path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no certificate in the file",
            cert_path.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("{}: not a PEM private key: {e}", key_path.display()))?;
    Ok((chain, key))
}

/// The client certificate chain and key an upstream connection presents (mTLS).
pub type ClientAuth = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// Reads a client certificate chain and its key (read at every config load: a reload rotates).
pub fn load_cert_and_key(cert_file: &str, key_file: &str) -> Result<ClientAuth, String> {
    let (cert_path, key_path) = (
        std::path::Path::new(cert_file),
        std::path::Path::new(key_file),
    );
    let cert_pem = read(cert_path, "certificate")?;
    let key_pem = read(key_path, "key")?;
    parse_chain_and_key(&cert_pem, &key_pem, cert_path, key_path)
}

pub fn upstream_client(
    ca_file: Option<&str>,
    client_auth: Option<ClientAuth>,
    alpn: &[u8],
) -> Result<Arc<rustls::ClientConfig>, String> {
    install_provider();
    let roots = match ca_file {
        Some(path) => load_roots(path)?,
        None => rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots);
    let mut cfg = match client_auth {
        Some((chain, key)) => cfg
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("unusable client certificate: {e}"))?,
        None => cfg.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn self_signed(names: &[&str]) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    fn listener_tls(yaml: &str) -> ListenerTls {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn files(dir: &Path, files: &[(&str, &str)]) {
        for (name, contents) in files {
            std::fs::write(dir.join(name), contents).unwrap();
        }
    }

    #[test]
    fn a_client_certificate_gives_its_rfc4514_subject_and_its_sans_in_order() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["svc.internal".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "billing");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Acme");
        params
            .subject_alt_names
            .push(SanType::Rfc822Name("ops@acme.test".try_into().unwrap()));
        params
            .subject_alt_names
            .push(SanType::URI("spiffe://acme/billing".try_into().unwrap()));
        let cert = params.self_signed(&key).unwrap();
        let c = client_cert(cert.der()).unwrap();
        let subject = c.subject.to_str().unwrap();
        assert!(
            subject.contains("CN=billing") && subject.contains("O=Acme"),
            "{subject}"
        );
        assert_eq!(
            c.san.unwrap(),
            "DNS:svc.internal,email:ops@acme.test,URI:spiffe://acme/billing"
        );
        assert!(client_cert(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])).is_none());
    }

    #[test]
    fn listener_files_are_checked_with_their_paths_and_the_fingerprint_follows_their_contents() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_a, key_a) = self_signed(&["a.example"]);
        let (_, key_b) = self_signed(&["b.example"]);
        files(
            dir.path(),
            &[("a.pem", &cert_a), ("a.key", &key_a), ("b.key", &key_b)],
        );
        let tls = |cert: &str, key: &str| {
            listener_tls(&format!(
                "certificates: [{{ cert_file: {cert}, key_file: {key} }}]\n"
            ))
        };
        let fingerprint = |cfg: &ListenerTls| {
            let mut f = Sha256::new();
            build(cfg, dir.path(), &mut f).map(|_| hex::encode(f.finalize()))
        };
        // Relative paths are read next to the config file.
        let first = fingerprint(&tls("a.pem", "a.key")).unwrap();
        assert_eq!(first, fingerprint(&tls("a.pem", "a.key")).unwrap());
        let e = fingerprint(&tls("a.pem", "b.key")).err().unwrap();
        assert!(
            e.contains("b.key does not belong to") && e.contains("a.pem"),
            "{e}"
        );
        let e = fingerprint(&tls("missing.pem", "a.key")).err().unwrap();
        assert!(
            e.starts_with("cannot read certificate") && e.contains("missing.pem"),
            "{e}"
        );
        files(dir.path(), &[("empty.pem", "")]);
        let e = fingerprint(&tls("empty.pem", "a.key")).err().unwrap();
        assert!(e.contains("no certificate in the file"), "{e}");
        let e = fingerprint(&tls("a.pem", "a.pem")).err().unwrap();
        assert!(e.contains("not a PEM private key"), "{e}");
        // A rotated certificate (same paths, new contents) changes the fingerprint, so a
        // reload of an unchanged config still picks it up.
        let (cert_a2, key_a2) = self_signed(&["a.example"]);
        files(dir.path(), &[("a.pem", &cert_a2), ("a.key", &key_a2)]);
        assert_ne!(first, fingerprint(&tls("a.pem", "a.key")).unwrap());
    }

    #[test]
    fn alpn_offers_h2_then_http11_and_hsts_is_rendered() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(&["a.example"]);
        files(dir.path(), &[("a.pem", &cert), ("a.key", &key)]);
        let cfg = listener_tls(
            "certificates: [{ cert_file: a.pem, key_file: a.key }]\nmin_version: \"1.3\"\nhsts: { max_age_s: 600, include_subdomains: true }\n",
        );
        let s = build(&cfg, dir.path(), &mut Sha256::new()).unwrap();
        assert_eq!(
            s.config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert_eq!(s.hsts.unwrap(), "max-age=600; includeSubDomains");
    }

    #[test]
    fn an_upstream_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = load_roots(empty.to_str().unwrap()).err().unwrap();
        assert!(e.ends_with("no certificate in the file"), "{e}");
        let (cert, _) = self_signed(&["up.internal"]);
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert).unwrap();
        assert_eq!(load_roots(ca.to_str().unwrap()).unwrap().len(), 1);
        let client = upstream_client(Some(ca.to_str().unwrap()), None, b"http/1.1").unwrap();
        assert_eq!(client.alpn_protocols, [b"http/1.1".to_vec()]);
    }
}
