//! A development PKI (rcgen): a device CA, the gateway's server certificate and one
//! certificate per device, whose Subject CN is the device id in decimal.
//!
//! For tests, the simulator and first-time users; production device certificates come
//! from the operator's device CA, and only its certificate is configured here.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};
use wenxiao_protocol::DeviceId;

/// A PKI operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `pki init` would overwrite an existing CA.
    #[error("{0} already holds a CA; remove it first to start over")]
    Exists(PathBuf),
    /// A certificate to revoke could not be read.
    #[error("crl: {0}")]
    Crl(String),
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct PemPair {
    /// Certificate (PEM).
    pub cert_pem: String,
    /// Private key (PEM, PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for PemPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PemPair(<key redacted>)")
    }
}

/// A certificate authority able to issue certificates.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    pair: PemPair,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevCa(<key redacted>)")
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// How long the development CA is valid, from a day before it is made.
pub const CA_VALIDITY_DAYS: i64 = 3_650;
/// How long a CRL made by [`DevCa::crl`] says it is current.
pub const CRL_VALIDITY_DAYS: i64 = 7;
/// How long a server or device certificate is valid, from an hour before it is issued
/// (the public web's ceiling, which TLS scanners hold certificates to).
pub const CERT_VALIDITY_DAYS: i64 = 397;

/// `params` made valid from `back` before now for `days` days.
fn valid_for(params: &mut CertificateParams, back: time::Duration, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - back;
    params.not_after = now + time::Duration::days(days);
}

impl DevCa {
    /// A new CA with a fresh P-256 key.
    pub fn generate(name: &str) -> Result<Self, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        valid_for(&mut params, time::Duration::days(1), CA_VALIDITY_DAYS);
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let pair = PemPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(Self {
            issuer: Issuer::new(params, key),
            pair,
        })
    }

    /// Loads `ca.pem` and `ca.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(Self {
            issuer,
            pair: PemPair { cert_pem, key_pem },
        })
    }

    /// The CA's certificate and key.
    pub fn pem(&self) -> &PemPair {
        &self.pair
    }

    /// A server certificate for the given DNS names or IP addresses.
    pub fn issue_server(&self, names: &[&str]) -> Result<PemPair, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "wenxiao-gateway");
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName((*n).try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate whose CN is `cn` (a device id in decimal, normally).
    pub fn issue_client(&self, cn: &str) -> Result<PemPair, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    /// A device certificate: CN = the id in decimal.
    pub fn issue_device(&self, id: DeviceId) -> Result<PemPair, PkiError> {
        self.issue_client(&id.get().to_string())
    }

    /// A CRL (PEM), number `crl_number`, valid for `CRL_VALIDITY_DAYS`, revoking the
    /// certificates `revoked` (PEM).
    pub fn crl(&self, revoked: &[&str], crl_number: u64) -> Result<String, PkiError> {
        let now = time::OffsetDateTime::now_utc();
        let mut certs = Vec::new();
        for pem in revoked {
            let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
                .map_err(|e| PkiError::Crl(e.to_string()))?;
            let c = p.parse_x509().map_err(|e| PkiError::Crl(e.to_string()))?;
            certs.push(rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(c.raw_serial()),
                revocation_time: now,
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
        }
        let params = rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: now + time::Duration::days(CRL_VALIDITY_DAYS),
            crl_number: rcgen::SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs: certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    fn issue(&self, mut params: CertificateParams) -> Result<PemPair, PkiError> {
        valid_for(&mut params, time::Duration::hours(1), CERT_VALIDITY_DAYS);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(PemPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn write(path: &Path, text: &str) -> Result<(), PkiError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::write(path, text).map_err(io(path))
}

/// `pki init DIR`: a CA (`ca.pem`, `ca.key`) and a server certificate for localhost
/// (`server.pem`, `server.key`). Refuses to overwrite an existing CA.
pub fn init(dir: &Path) -> Result<DevCa, PkiError> {
    if dir.join("ca.key").exists() {
        return Err(PkiError::Exists(dir.to_owned()));
    }
    let ca = DevCa::generate("Wenxiao development device CA")?;
    let server = ca.issue_server(&["localhost", "127.0.0.1", "::1"])?;
    write(&dir.join("ca.pem"), &ca.pem().cert_pem)?;
    write(&dir.join("ca.key"), &ca.pem().key_pem)?;
    write(&dir.join("server.pem"), &server.cert_pem)?;
    write(&dir.join("server.key"), &server.key_pem)?;
    Ok(ca)
}

/// `pki device ID`: `devices/ID.pem` and `devices/ID.key` under `dir`, issued by its CA.
pub fn device(dir: &Path, id: DeviceId) -> Result<(PathBuf, PathBuf), PkiError> {
    let ca = DevCa::load(dir)?;
    let pair = ca.issue_device(id)?;
    let cert = dir.join("devices").join(format!("{id}.pem"));
    let key = dir.join("devices").join(format!("{id}.key"));
    write(&cert, &pair.cert_pem)?;
    write(&key, &pair.key_pem)?;
    Ok((cert, key))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn validity_days(pem: &str) -> (i64, i64) {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let c = p.parse_x509().unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let v = c.validity();
        (
            (now - v.not_before.timestamp()) / 3_600,
            (v.not_after.timestamp() - now) / 86_400,
        )
    }

    #[test]
    fn certificates_have_bounded_validity() {
        let ca = DevCa::generate("test CA").unwrap();
        // Whole hours back and days ahead (the second the test runs in may round either way).
        let within = |got: i64, want: i64| got == want || got == want - 1;
        let (back_h, ahead_d) = validity_days(&ca.pem().cert_pem);
        assert_eq!(back_h, 24);
        assert!(within(ahead_d, CA_VALIDITY_DAYS), "{ahead_d}");
        let device = ca.issue_device(DeviceId(310_100_000_001)).unwrap();
        let (back_h, ahead_d) = validity_days(&device.cert_pem);
        assert_eq!(back_h, 1);
        assert!(within(ahead_d, CERT_VALIDITY_DAYS), "{ahead_d}");
        let server = ca.issue_server(&["localhost"]).unwrap();
        assert!(within(
            validity_days(&server.cert_pem).1,
            CERT_VALIDITY_DAYS
        ));
    }
}
