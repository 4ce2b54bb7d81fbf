//! Certificates for a TLS engine, made by the test itself (rcgen, no tool or network): a CA,
//! the engine's certificate for 127.0.0.1 and dockward's client certificate, laid out as the
//! docker CLI's `DOCKER_CERT_PATH` (`ca.pem`, `cert.pem`, `key.pem`), plus the wrong sets a
//! test needs to show each refusal.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A CA, what it signed, and a second CA that signed nothing the engine knows; every set of
/// files in one temporary directory, removed when dropped.
pub struct TestCerts {
    dir: tempfile::TempDir,
}

impl TestCerts {
    /// Makes every set:
    /// - [`TestCerts::server`]: the engine's (`--tlscacert`, `--tlscert`, `--tlskey`);
    /// - [`TestCerts::client`]: dockward's, the right one;
    /// - [`TestCerts::ca_only`]: the right `ca.pem`, no client certificate;
    /// - [`TestCerts::wrong_ca`]: a right client certificate, but another CA's `ca.pem`;
    /// - [`TestCerts::foreign_client`]: the right `ca.pem`, a client certificate of another CA.
    pub fn generate() -> TestCerts {
        let dir = tempfile::tempdir().expect("certificates directory");
        let ca = authority("dockward test CA");
        let other = authority("some other CA");
        let server = leaf(&ca, &["127.0.0.1", "localhost"], ExtendedKeyUsagePurpose::ServerAuth);
        let client = leaf(&ca, &[], ExtendedKeyUsagePurpose::ClientAuth);
        let foreign = leaf(&other, &[], ExtendedKeyUsagePurpose::ClientAuth);
        let write = |name: &str, ca: &str, pair: Option<&(String, String)>| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).expect("certificate directory");
            std::fs::write(d.join("ca.pem"), ca).expect("ca.pem");
            if let Some((cert, key)) = pair {
                std::fs::write(d.join("cert.pem"), cert).expect("cert.pem");
                std::fs::write(d.join("key.pem"), key).expect("key.pem");
            }
        };
        write("server", &ca.pem(), Some(&server));
        write("client", &ca.pem(), Some(&client));
        write("ca-only", &ca.pem(), None);
        write("wrong-ca", &other.pem(), Some(&client));
        write("foreign-client", &ca.pem(), Some(&foreign));
        TestCerts { dir }
    }

    /// The engine's files: `ca.pem` (the CA its clients must be signed by), `cert.pem` and
    /// `key.pem` (its own, for 127.0.0.1 and localhost).
    pub fn server(&self) -> PathBuf {
        self.dir.path().join("server")
    }

    /// dockward's files, all right.
    pub fn client(&self) -> PathBuf {
        self.dir.path().join("client")
    }

    /// The right `ca.pem` alone: dockward offers no client certificate.
    pub fn ca_only(&self) -> PathBuf {
        self.dir.path().join("ca-only")
    }

    /// A right client certificate with another CA's `ca.pem`: the engine's certificate does
    /// not verify.
    pub fn wrong_ca(&self) -> PathBuf {
        self.dir.path().join("wrong-ca")
    }

    /// The right `ca.pem` with a client certificate of another CA: the engine refuses it.
    pub fn foreign_client(&self) -> PathBuf {
        self.dir.path().join("foreign-client")
    }

    /// A copy of `from` (a set above) under `name`, for a test that breaks one of its files.
    pub fn copy(&self, from: &Path, name: &str) -> PathBuf {
        let to = self.dir.path().join(name);
        std::fs::create_dir_all(&to).expect("certificate directory");
        for entry in std::fs::read_dir(from).expect("read certificate directory").flatten() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy certificate file");
        }
        to
    }
}

/// A self-signed CA allowed to sign certificates.
fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA certificate")
}

/// A certificate signed by `ca` for `names` (IP addresses or DNS names) and `usage`: its PEM
/// and its key's PEM (PKCS#8).
fn leaf(ca: &CertifiedIssuer<'static, KeyPair>, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("leaf parameters");
    params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("dockward"));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, ca).expect("leaf certificate");
    (cert.pem(), key.serialize_pem())
}
