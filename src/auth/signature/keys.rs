//! Verification keys and the RFC 9421 §3.3 algorithms. The algorithm belongs to the key: a
//! request's `alg` parameter can only agree with it, never choose another.

use aws_lc_rs::{hmac, signature};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Ed25519,
    EcdsaP256Sha256,
    EcdsaP384Sha384,
    RsaPssSha512,
    RsaV15Sha256,
    HmacSha256,
}

impl Alg {
    pub const NAMES: &'static str =
        "ed25519, ecdsa-p256-sha256, ecdsa-p384-sha384, rsa-pss-sha512, rsa-v1_5-sha256, hmac-sha256";

    pub fn parse(s: &str) -> Option<Alg> {
        Some(match s {
            "ed25519" => Alg::Ed25519,
            "ecdsa-p256-sha256" => Alg::EcdsaP256Sha256,
            "ecdsa-p384-sha384" => Alg::EcdsaP384Sha384,
            "rsa-pss-sha512" => Alg::RsaPssSha512,
            "rsa-v1_5-sha256" => Alg::RsaV15Sha256,
            "hmac-sha256" => Alg::HmacSha256,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Alg::Ed25519 => "ed25519",
            Alg::EcdsaP256Sha256 => "ecdsa-p256-sha256",
            Alg::EcdsaP384Sha384 => "ecdsa-p384-sha384",
            Alg::RsaPssSha512 => "rsa-pss-sha512",
            Alg::RsaV15Sha256 => "rsa-v1_5-sha256",
            Alg::HmacSha256 => "hmac-sha256",
        }
    }
}

/// Key bytes as configured: the raw public key (Ed25519 point, SEC1 point, PKCS#1 RSA key)
/// or the HMAC secret. Comparable, so an unchanged provider survives a reload.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyMaterial {
    pub alg: Alg,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KeyMaterial({}, {} bytes)",
            self.alg.as_str(),
            self.bytes.len()
        )
    }
}

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_RSA_PSS: &str = "1.2.840.113549.1.1.10";
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_ED25519: &str = "1.3.101.112";

/// The shortest HMAC secret accepted (RFC 9421 §3.3.3 asks for one as long as the hash).
pub const MIN_SECRET_BYTES: usize = 32;

impl KeyMaterial {
    /// A public key from PEM text (`PUBLIC KEY` = SubjectPublicKeyInfo, or `RSA PUBLIC KEY` =
    /// PKCS#1), checked to be of the kind `alg` needs.
    pub fn public_pem(alg: Alg, pem: &str) -> Result<KeyMaterial, String> {
        if alg == Alg::HmacSha256 {
            return Err(
                "hmac-sha256 takes a secret (secret or secret_base64), not a public key".into(),
            );
        }
        let (label, der) = pem_block(pem)?;
        let bytes = match label.as_str() {
            "RSA PUBLIC KEY" => {
                if !matches!(alg, Alg::RsaPssSha512 | Alg::RsaV15Sha256) {
                    return Err(format!("an RSA key cannot be used with {}", alg.as_str()));
                }
                der
            }
            "PUBLIC KEY" => spki_key(alg, &der)?,
            other => return Err(format!("expected a PEM `PUBLIC KEY`, found `{other}`")),
        };
        Ok(KeyMaterial { alg, bytes })
    }

    pub fn secret(bytes: Vec<u8>) -> Result<KeyMaterial, String> {
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "an hmac-sha256 secret needs at least {MIN_SECRET_BYTES} bytes, this one has {}",
                bytes.len()
            ));
        }
        Ok(KeyMaterial {
            alg: Alg::HmacSha256,
            bytes,
        })
    }
}

/// The one PEM block in `text`: its label and decoded bytes.
fn pem_block(text: &str) -> Result<(String, Vec<u8>), String> {
    let begin = text
        .find("-----BEGIN ")
        .ok_or("no PEM block (-----BEGIN ...-----)")?;
    let rest = &text[begin + 11..];
    let label_end = rest.find("-----").ok_or("malformed PEM header")?;
    let label = rest[..label_end].to_string();
    let body = &rest[label_end + 5..];
    let end_marker = format!("-----END {label}-----");
    let end = body.find(&end_marker).ok_or("PEM block has no END line")?;
    let b64: String = body[..end].split_whitespace().collect();
    let der = STANDARD
        .decode(b64)
        .map_err(|e| format!("PEM body is not base64: {e}"))?;
    Ok((label, der))
}

/// The public key inside a SubjectPublicKeyInfo, if its algorithm (and curve) fit `alg`.
fn spki_key(alg: Alg, der: &[u8]) -> Result<Vec<u8>, String> {
    use x509_parser::prelude::FromDer;
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der)
        .map_err(|e| format!("not a SubjectPublicKeyInfo: {e}"))?;
    let oid = spki.algorithm.algorithm.to_id_string();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    let fits = match alg {
        Alg::Ed25519 => oid == OID_ED25519,
        Alg::EcdsaP256Sha256 => oid == OID_EC && curve.as_deref() == Some(OID_P256),
        Alg::EcdsaP384Sha384 => oid == OID_EC && curve.as_deref() == Some(OID_P384),
        Alg::RsaPssSha512 | Alg::RsaV15Sha256 => oid == OID_RSA || oid == OID_RSA_PSS,
        Alg::HmacSha256 => false,
    };
    if !fits {
        return Err(format!(
            "the key (algorithm {oid}{}) is not a {} key",
            curve.map(|c| format!(", curve {c}")).unwrap_or_default(),
            alg.as_str()
        ));
    }
    Ok(spki.subject_public_key.data.to_vec())
}

/// A key ready to verify.
pub enum Verifier {
    Public(signature::UnparsedPublicKey<Vec<u8>>),
    Hmac(Box<hmac::Key>),
}

impl Verifier {
    pub fn new(k: &KeyMaterial) -> Verifier {
        let alg: &'static dyn signature::VerificationAlgorithm = match k.alg {
            Alg::Ed25519 => &signature::ED25519,
            Alg::EcdsaP256Sha256 => &signature::ECDSA_P256_SHA256_FIXED,
            Alg::EcdsaP384Sha384 => &signature::ECDSA_P384_SHA384_FIXED,
            Alg::RsaPssSha512 => &signature::RSA_PSS_2048_8192_SHA512,
            Alg::RsaV15Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Alg::HmacSha256 => {
                return Verifier::Hmac(Box::new(hmac::Key::new(hmac::HMAC_SHA256, &k.bytes)))
            }
        };
        Verifier::Public(signature::UnparsedPublicKey::new(alg, k.bytes.clone()))
    }

    /// Whether `sig` signs `base` (HMAC compared in constant time).
    pub fn verify(&self, base: &[u8], sig: &[u8]) -> bool {
        match self {
            Verifier::Public(k) => k.verify(base, sig).is_ok(),
            Verifier::Hmac(k) => hmac::verify(k, base, sig).is_ok(),
        }
    }
}
