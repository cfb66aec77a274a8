//! A local CA and server certificate for listeners that are not on loopback.
//!
//! The live view decodes video with WebCodecs, which browsers offer only in a secure
//! context, so a portal reached over the network must speak HTTPS even on a test
//! install. Without configured certificates the broker generates a CA once under
//! `DATA_DIR/tls/` and a server certificate signed by it; people import `ca.pem` into
//! their browser or replace both with real certificates.

use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Paths of the generated material.
#[derive(Debug, Clone)]
pub struct GeneratedTls {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Whether this call created the files (false when they already existed).
    pub created: bool,
}

/// Returns the generated certificate and key, creating them when missing.
pub fn ensure_generated(
    data_dir: &Path,
    names: &[String],
    addresses: &[IpAddr],
) -> anyhow::Result<GeneratedTls> {
    let dir = data_dir.join("tls");
    let paths = GeneratedTls {
        ca_cert: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        created: false,
    };
    if paths.ca_cert.exists() && paths.cert.exists() && paths.key.exists() {
        return Ok(paths);
    }

    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let ca_key = KeyPair::generate().context("cannot generate the CA key")?;
    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).context("invalid CA parameters")?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Strongroom local CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .context("cannot sign the CA certificate")?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().context("cannot generate the server key")?;
    let mut server_params =
        CertificateParams::new(names.to_vec()).context("invalid server certificate names")?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "Strongroom portal");
    for address in addresses {
        server_params
            .subject_alt_names
            .push(SanType::IpAddress(*address));
    }
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .context("cannot sign the server certificate")?;

    write_private(&paths.key, server_key.serialize_pem().as_bytes())?;
    std::fs::write(
        &paths.cert,
        format!("{}{}", server_cert.pem(), ca_cert.pem()),
    )
    .with_context(|| format!("cannot write {}", paths.cert.display()))?;
    std::fs::write(&paths.ca_cert, ca_cert.pem())
        .with_context(|| format!("cannot write {}", paths.ca_cert.display()))?;

    Ok(GeneratedTls {
        created: true,
        ..paths
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_material_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_owned()];
        let addresses = vec!["192.0.2.10".parse().unwrap()];

        let first = ensure_generated(dir.path(), &names, &addresses).unwrap();
        let cert = std::fs::read(&first.cert).unwrap();
        let second = ensure_generated(dir.path(), &names, &addresses).unwrap();

        assert!(first.created);
        assert!(!second.created);
        assert_eq!(std::fs::read(&second.cert).unwrap(), cert);
        let mode = std::fs::metadata(&first.key).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }
}
