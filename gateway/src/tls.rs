//! rustls configurations: the gateway's (client certificates required, from the device
//! CA) and a device's (for the simulator and tests). One crypto provider, ring, is named
//! explicitly everywhere, so no process-wide default is needed.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::sync::Arc;
use wenxiao_protocol::DeviceId;
use x509_parser::prelude::FromDer;

/// Resumable TLS sessions the server remembers (stateful resumption); tickets are on as
/// well, so a reconnect storm costs resumed handshakes, not full ones.
const SESSION_CACHE_ENTRIES: usize = 32_768;

/// A TLS configuration that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// PEM could not be parsed.
    #[error("{what}: {message}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// rustls refused the material.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(what: &'static str, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            message: "no certificate found".to_owned(),
        });
    }
    Ok(certs)
}

fn key(what: &'static str, pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| TlsError::Pem {
            what,
            message: e.to_string(),
        })?
        .ok_or(TlsError::Pem {
            what,
            message: "no private key found".to_owned(),
        })
}

fn roots(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs("device CA", ca_pem)? {
        roots.add(c)?;
    }
    Ok(roots)
}

/// A device CA's revocation list, read: for the verifier, and the revoked serial numbers
/// (big-endian bytes, without leading zeros) for the sessions already open.
#[derive(Debug, Clone, Default)]
pub struct Crl {
    /// The lists as the verifier takes them.
    pub lists: Vec<rustls::pki_types::CertificateRevocationListDer<'static>>,
    /// Every serial they revoke.
    pub revoked: std::collections::HashSet<Vec<u8>>,
}

/// Reads CRLs in PEM (one or more `X509 CRL` blocks) or a single DER one.
pub fn read_crl(bytes: &[u8]) -> Result<Crl, TlsError> {
    let bad = |message: String| TlsError::Pem {
        what: "device CRL",
        message,
    };
    let lists: Vec<rustls::pki_types::CertificateRevocationListDer<'static>> =
        if bytes.starts_with(b"-----") {
            rustls_pemfile::crls(&mut &bytes[..])
                .collect::<Result<_, _>>()
                .map_err(|e| bad(e.to_string()))?
        } else {
            vec![rustls::pki_types::CertificateRevocationListDer::from(
                bytes.to_vec(),
            )]
        };
    if lists.is_empty() {
        return Err(bad("no CRL found".to_owned()));
    }
    let mut revoked = std::collections::HashSet::new();
    for l in &lists {
        let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(l)
            .map_err(|e| bad(e.to_string()))?;
        for r in crl.iter_revoked_certificates() {
            revoked.insert(serial_bytes(r.raw_serial()));
        }
    }
    Ok(Crl { lists, revoked })
}

/// A serial number as compared here: big-endian, without leading zero bytes.
pub fn serial_bytes(raw: &[u8]) -> Vec<u8> {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    raw.get(start..).unwrap_or_default().to_vec()
}

/// The serial number of a peer's certificate (see [`serial_bytes`]).
pub fn serial_of(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let (_, c) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(serial_bytes(c.raw_serial()))
}

/// The gateway's TLS 1.3/1.2 configuration: clients must present a certificate that
/// chains to `device_ca_pem` and that `crl` does not revoke.
pub fn server_config(
    device_ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    crl: &Crl,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(device_ca_pem)?), provider());
    if !crl.lists.is_empty() {
        // The device CA's list covers the devices' certificates; the CA itself is trusted
        // as configured.
        builder = builder
            .with_crls(crl.lists.clone())
            .only_check_end_entity_revocation();
    }
    let verifier = builder.build()?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs("server certificate", cert_pem)?,
            key("server key", key_pem)?,
        )?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(config))
}

/// An HTTPS listener's configuration (the console's): TLS 1.3/1.2, no client
/// certificates, HTTP/1.1.
pub fn https_config(cert_pem: &str, key_pem: &str) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(
            certs("console certificate", cert_pem)?,
            key("console key", key_pem)?,
        )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A device's configuration: trusts `server_ca_pem`, presents `cert_pem`/`key_pem`
/// (or no certificate when `None`, for refusal tests).
pub fn client_config(
    server_ca_pem: &str,
    client: Option<(&str, &str)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots(server_ca_pem)?);
    let config = match client {
        Some((cert, k)) => builder
            .with_client_auth_cert(certs("client certificate", cert)?, key("client key", k)?)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Why a verified certificate does not name a device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertIdError {
    /// No client certificate (cannot happen once the verifier accepted the handshake).
    #[error("no client certificate")]
    Missing,
    /// The certificate does not parse, or has no Subject CN.
    #[error("certificate has no readable subject CN")]
    NoCn,
    /// The CN is not the canonical decimal form of a u64.
    #[error("certificate CN {0:?} is not a decimal device id")]
    NotAnId(String),
}

/// The device id a client certificate names: its Subject CN, which must be the
/// canonical decimal form of a u64 (digits only, no leading zeros).
pub fn device_id_of(cert: Option<&CertificateDer<'_>>) -> Result<DeviceId, CertIdError> {
    let cert = cert.ok_or(CertIdError::Missing)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|_| CertIdError::NoCn)?;
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .ok_or(CertIdError::NoCn)?;
    parse_device_cn(cn)
}

/// Parses a CN as a device id: digits only, no leading zeros, fits u64.
pub fn parse_device_cn(cn: &str) -> Result<DeviceId, CertIdError> {
    let canonical = !cn.is_empty()
        && cn.bytes().all(|b| b.is_ascii_digit())
        && (cn == "0" || !cn.starts_with('0'));
    match cn.parse::<u64>() {
        Ok(id) if canonical => Ok(DeviceId(id)),
        _ => Err(CertIdError::NotAnId(cn.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_decimal_cns_are_ids() {
        assert_eq!(
            parse_device_cn("310100000001"),
            Ok(DeviceId(310_100_000_001))
        );
        for bad in ["", "0123", "+1", "1 ", "abc", "18446744073709551616", "-1"] {
            assert!(parse_device_cn(bad).is_err(), "{bad:?}");
        }
    }
}
