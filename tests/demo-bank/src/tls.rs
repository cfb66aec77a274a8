//! A generated certificate authority and server certificate for the bank's HTTPS port.

use std::net::IpAddr;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// PEM texts of a generated CA and a server certificate signed by it.
pub struct GeneratedTls {
    pub ca_pem: String,
    /// The server certificate followed by the CA certificate.
    pub chain_pem: String,
    pub key_pem: String,
}

/// Generates a CA and a server certificate for `names` and `addresses`. The CA exists
/// only in memory and in the returned PEM text, so each start has a fresh one.
pub fn generate(names: &[String], addresses: &[IpAddr]) -> anyhow::Result<GeneratedTls> {
    let ca_key = KeyPair::generate().context("cannot generate the CA key")?;
    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).context("invalid CA parameters")?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Demo Bank test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .context("cannot sign the CA certificate")?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().context("cannot generate the server key")?;
    let mut params =
        CertificateParams::new(names.to_vec()).context("invalid server certificate names")?;
    params
        .distinguished_name
        .push(DnType::CommonName, "Demo Bank");
    for address in addresses {
        params.subject_alt_names.push(SanType::IpAddress(*address));
    }
    let server_cert = params
        .signed_by(&server_key, &issuer)
        .context("cannot sign the server certificate")?;

    Ok(GeneratedTls {
        ca_pem: ca_cert.pem(),
        chain_pem: format!("{}{}", server_cert.pem(), ca_cert.pem()),
        key_pem: server_key.serialize_pem(),
    })
}
