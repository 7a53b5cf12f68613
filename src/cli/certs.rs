//! `coremq certs dev DIR`: a self-signed CA and an ECDSA P-256 server certificate for
//! `localhost` and 127.0.0.1, plus a client certificate (CN `dev-client`) for trying mutual
//! TLS. For trials only: the CA key is written next to the certificates.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// Files written by [`write_dev_certs`].
pub const DEV_FILES: [&str; 6] = ["ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key"];

/// Writes the development CA, server and client certificates into `dir` (created if needed).
pub fn write_dev_certs(dir: &Path) -> Result<(), String> {
    let err = |e: rcgen::Error| format!("certificate generation failed: {e}");
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let alg = &rcgen::PKCS_ECDSA_P256_SHA256;

    let ca_key = KeyPair::generate_for(alg).map_err(err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "coremq development CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca, &ca_key);

    let server_key = KeyPair::generate_for(alg).map_err(err)?;
    let mut server =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).map_err(err)?;
    server.distinguished_name.push(DnType::CommonName, "localhost");
    let server_cert = server.signed_by(&server_key, &issuer).map_err(err)?;

    let client_key = KeyPair::generate_for(alg).map_err(err)?;
    let mut client = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    client.distinguished_name.push(DnType::CommonName, "dev-client");
    let client_cert = client.signed_by(&client_key, &issuer).map_err(err)?;

    let files = [
        ("ca.pem", ca_cert.pem()),
        ("ca.key", ca_key.serialize_pem()),
        ("server.pem", server_cert.pem()),
        ("server.key", server_key.serialize_pem()),
        ("client.pem", client_cert.pem()),
        ("client.key", client_key.serialize_pem()),
    ];
    for (name, pem) in files {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let p = dir.join(name);
        // Private keys are readable by their owner only, from the moment they exist.
        let mode = if name.ends_with(".key") { 0o600 } else { 0o644 };
        let _ = std::fs::remove_file(&p); // an older file keeps its mode when truncated
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&p)
            .and_then(|mut f| f.write_all(pem.as_bytes()))
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn private_keys_are_written_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        super::write_dev_certs(dir.path()).unwrap();
        for name in super::DEV_FILES {
            let mode = std::fs::metadata(dir.path().join(name)).unwrap().permissions().mode() & 0o777;
            let want = if name.ends_with(".key") { 0o600 } else { 0o644 };
            assert_eq!(mode, want, "{name}");
        }
    }
}
