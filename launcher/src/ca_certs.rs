//! Extra CA certificates of a site, checked and converted for Chromium's
//! `CACertificates` policy, which takes each certificate as base64 of its DER bytes.

use base64::Engine;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Maximum number of extra CA certificates of one session.
pub const MAX_CA_CERTS: usize = 8;
/// Maximum length of the PEM text of one certificate, in bytes.
pub const MAX_CA_CERT_PEM_LEN: usize = 16 * 1024;

/// Checks that `pem` contains exactly one PEM certificate of at most
/// [`MAX_CA_CERT_PEM_LEN`] bytes and returns its DER bytes in standard base64.
pub fn policy_entry(pem: &str) -> Result<String, String> {
    if pem.len() > MAX_CA_CERT_PEM_LEN {
        return Err(format!(
            "is {} bytes; the maximum is {MAX_CA_CERT_PEM_LEN}",
            pem.len()
        ));
    }
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|error| format!("is not a valid PEM certificate ({error})"))?;
    match certificates.as_slice() {
        [certificate] => Ok(base64::engine::general_purpose::STANDARD.encode(certificate)),
        [] => Err("contains no PEM certificate".to_owned()),
        list => Err(format!(
            "contains {} certificates; give one per entry",
            list.len()
        )),
    }
}

/// Converts every certificate, or names each bad entry by its index.
pub fn policy_entries(pems: &[String]) -> Result<Vec<String>, Vec<String>> {
    let mut problems = Vec::new();
    if pems.len() > MAX_CA_CERTS {
        problems.push(format!(
            "extra_ca_certs has {} entries; the maximum is {MAX_CA_CERTS}",
            pems.len()
        ));
    }
    let mut entries = Vec::with_capacity(pems.len());
    for (index, pem) in pems.iter().enumerate() {
        match policy_entry(pem) {
            Ok(entry) => entries.push(entry),
            Err(message) => problems.push(format!("extra_ca_certs[{index}] {message}")),
        }
    }
    if problems.is_empty() {
        Ok(entries)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\n\
        MIIBXzCCAQWgAwIBAgIUQJ6Ym2mFmRjHTeVuyXr1VzOKZzkwCgYIKoZIzj0EAwIw\n\
        -----END CERTIFICATE-----\n";

    #[test]
    fn one_certificate_becomes_base64_der() {
        let entry = policy_entry(CERT).unwrap();
        let der = base64::engine::general_purpose::STANDARD
            .decode(&entry)
            .unwrap();
        let expected = CertificateDer::pem_slice_iter(CERT.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(der, expected.as_ref());
        assert!(!entry.contains(char::is_whitespace));
    }

    #[test]
    fn bad_entries_are_named() {
        let two = format!("{CERT}{CERT}");
        let huge = format!("{CERT}{}", " ".repeat(MAX_CA_CERT_PEM_LEN));
        let problems =
            policy_entries(&[CERT.to_owned(), "not a certificate".to_owned(), two, huge])
                .unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].starts_with("extra_ca_certs[1] contains no PEM"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("extra_ca_certs[2] contains 2"),
            "{problems:?}"
        );
        assert!(
            problems[2].starts_with("extra_ca_certs[3] is "),
            "{problems:?}"
        );
    }

    #[test]
    fn too_many_certificates_are_refused() {
        let pems = vec![CERT.to_owned(); MAX_CA_CERTS + 1];
        let problems = policy_entries(&pems).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
    }
}
