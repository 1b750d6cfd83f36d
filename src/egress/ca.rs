//! The per-run CA: made when the proxy starts, name-constrained to the
//! credential hosts (even a leaked key could sign for nothing else), and
//! used only to sign the leaf certificates the proxy shows the agent for
//! those hosts. The agent gets the certificate, never the key.

use super::policy::Destination;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use time::{Duration, OffsetDateTime};

/// A run's certificate authority.
pub struct RunCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
}

/// A leaf certificate chain and its key, for a TLS server config.
pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

fn err(e: rcgen::Error) -> String {
    format!("certificate: {e}")
}

impl RunCa {
    /// A fresh CA that may sign only for `hosts`, valid for 30 days (its
    /// leaves for one, renewed by the proxy).
    pub fn new(hosts: &[Destination]) -> Result<RunCa, String> {
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "bus egress per-run CA");
        name.push(DnType::OrganizationName, "bus-containers");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(30);
        let mut permitted = Vec::new();
        for h in hosts {
            permitted.push(match h.host.parse::<IpAddr>() {
                Ok(ip) => GeneralSubtree::IpAddress(rcgen::CidrSubnet::from_addr_prefix(
                    ip,
                    if ip.is_ipv4() { 32 } else { 128 },
                )),
                Err(_) => GeneralSubtree::DnsName(h.host.clone()),
            });
        }
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: permitted,
            excluded_subtrees: vec![],
        });
        let cert = params.self_signed(&key).map_err(err)?;
        Ok(RunCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM: what the agent trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A leaf certificate for `host`, valid for a day.
    pub fn leaf(&self, host: &str) -> Result<Leaf, String> {
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::new(vec![host.to_owned()]).map_err(err)?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, host.to_owned());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(1);
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        Ok(Leaf {
            chain: vec![cert.der().clone(), self.cert_der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }

    /// Writes `ca.pem` (0644) and `ca-key.pem` (0600) into `dir` (made
    /// 0700 when missing), each atomically.
    pub fn write_files(&self, dir: &Path) -> std::io::Result<()> {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        write_atomic(&dir.join("ca.pem"), self.cert_pem.as_bytes(), 0o644)?;
        write_atomic(
            &dir.join("ca-key.pem"),
            self.issuer.key().serialize_pem().as_bytes(),
            0o600,
        )
    }
}

use std::os::unix::fs::DirBuilderExt;

/// Writes `path` through a temporary file created with `mode` (never
/// wider, whatever the umask) and renamed into place.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(data)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_have_tight_modes() {
        let ca = RunCa::new(&[Destination {
            host: "c.test".into(),
            port: 443,
        }])
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("ca");
        ca.write_files(&sub).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&sub), 0o700);
        assert_eq!(mode(&sub.join("ca-key.pem")), 0o600);
        assert_eq!(mode(&sub.join("ca.pem")), 0o644);
        let key = std::fs::read_to_string(sub.join("ca-key.pem")).unwrap();
        assert!(key.contains("PRIVATE KEY"));
        assert!(ca.cert_pem().contains("BEGIN CERTIFICATE"));
        assert!(!ca.cert_pem().contains("PRIVATE"));
        assert_eq!(ca.leaf("c.test").unwrap().chain.len(), 2);
    }
}
