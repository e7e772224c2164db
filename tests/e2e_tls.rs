//! TLS on both listeners with real clients: curl (HTTP/1.1 and HTTP/2 by ALPN, a CA file) and grpcio
//! (SSL channel credentials), mutual TLS with client certificates, and certificates reloaded on SIGHUP.

mod common;

use common::Slate;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A throwaway CA that signs server and client certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// (certificate PEM, key PEM) for `usage`, valid for localhost and 127.0.0.1.
    fn sign(&self, usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Server certificate files signed by `ca`, written over `dir/server.{crt,key}`.
fn install_server_cert(dir: &Path, ca: &Ca) {
    let (cert, key) = ca.sign(ExtendedKeyUsagePurpose::ServerAuth);
    write(dir, "server.crt", &cert);
    write(dir, "server.key", &key);
}

fn tls_config(dir: &Path, client_ca: Option<&Path>) -> String {
    let mut t = format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        dir.join("server.crt").display(),
        dir.join("server.key").display()
    );
    if let Some(ca) = client_ca {
        t += &format!("client_ca_file = \"{}\"\n", ca.display());
    }
    t
}

/// `curl` GET of `url`: (HTTP status, HTTP version), or the status 0 when the request failed.
fn curl(url: &str, args: &[&str]) -> (u16, String) {
    let out = Command::new(common::tool("curl", "curl"))
        .args(["-s", "-o", "/dev/null", "--max-time", "10", "-w", "%{http_code} %{http_version}"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, version) = text.split_once(' ').unwrap_or(("0", ""));
    (code.parse().unwrap_or(0), version.to_string())
}

/// Polls `GET /health/ready` over TLS until 200.
fn wait_ready(slate: &Slate, ca: &Path) {
    let url = format!("https://127.0.0.1:{}/health/ready", slate.http.port());
    let deadline = Instant::now() + Duration::from_secs(60);
    while curl(&url, &["--cacert", ca.to_str().unwrap()]).0 != 200 {
        assert!(Instant::now() < deadline, "not ready over TLS; logs:\n{}", slate.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// grpcio's `grpc.health.v1.Health/Check` over an SSL channel: the response bytes in hex, or the
/// error's status code name.
fn grpcio_health(slate: &Slate, ca: &Path, client: Option<(&Path, &Path)>) -> String {
    let script = r#"
import grpc, sys
ca, port = sys.argv[1], sys.argv[2]
read = lambda p: open(p, 'rb').read()
key, chain = (read(sys.argv[3]), read(sys.argv[4])) if len(sys.argv) > 4 else (None, None)
creds = grpc.ssl_channel_credentials(root_certificates=read(ca), private_key=key, certificate_chain=chain)
channel = grpc.secure_channel('localhost:' + port, creds)
check = channel.unary_unary('/grpc.health.v1.Health/Check')
try:
    print(check(b'', timeout=10).hex())
except grpc.RpcError as e:
    print(e.code().name)
"#;
    let mut cmd = Command::new(common::python());
    cmd.args(["-c", script]).arg(ca).arg(slate.grpc.port().to_string());
    if let Some((cert, key)) = client {
        cmd.arg(key).arg(cert);
    }
    let out = cmd.output().expect("run python");
    assert!(out.status.success(), "grpcio client failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `HealthCheckResponse { status: SERVING }` on the wire.
const SERVING: &str = "0801";

#[test]
fn https_and_grpc_over_tls_with_real_clients_and_reload_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca1 = Ca::new("Slate test CA 1");
    let ca1_file = write(d, "ca1.crt", &ca1.pem());
    install_server_cert(d, &ca1);
    let slate = Slate::start(&tls_config(d, None));
    assert!(slate.logs().contains("tls=true"), "{}", slate.logs());
    wait_ready(&slate, &ca1_file);

    let url = format!("https://127.0.0.1:{}/health/live", slate.http.port());
    let ca1_arg = ["--cacert", ca1_file.to_str().unwrap()];
    assert_eq!(curl(&url, &[&ca1_arg[..], &["--http1.1"]].concat()), (200, "1.1".into()));
    assert_eq!(curl(&url, &[&ca1_arg[..], &["--http2"]].concat()), (200, "2".into()), "h2 by ALPN");
    assert_eq!(curl(&url, &[]).0, 0, "a client that does not trust the CA must fail");
    let plain = format!("http://127.0.0.1:{}/health/live", slate.http.port());
    assert_eq!(curl(&plain, &[]).0, 0, "plain HTTP on the TLS listener must fail");
    assert_eq!(grpcio_health(&slate, &ca1_file, None), SERVING);

    // New certificates from another CA, then SIGHUP: new handshakes use them.
    let ca2 = Ca::new("Slate test CA 2");
    let ca2_file = write(d, "ca2.crt", &ca2.pem());
    install_server_cert(d, &ca2);
    nix::sys::signal::kill(slate.pid(), nix::sys::signal::Signal::SIGHUP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !slate.logs().contains("TLS certificates reloaded") {
        assert!(Instant::now() < deadline, "no reload logged; logs:\n{}", slate.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(curl(&url, &["--cacert", ca2_file.to_str().unwrap()]).0, 200);
    assert_eq!(curl(&url, &ca1_arg).0, 0, "the old certificate is still served");
    assert_eq!(grpcio_health(&slate, &ca2_file, None), SERVING);

    // A reload that fails keeps the working certificates.
    write(d, "server.key", "not a key");
    nix::sys::signal::kill(slate.pid(), nix::sys::signal::Signal::SIGHUP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !slate.logs().contains("TLS reload failed") {
        assert!(Instant::now() < deadline, "no failed reload logged; logs:\n{}", slate.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(slate.logs().contains("server.tls.key_file"), "{}", slate.logs());
    assert_eq!(curl(&url, &["--cacert", ca2_file.to_str().unwrap()]).0, 200);
}

#[test]
fn mutual_tls_requires_a_client_certificate_from_the_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server_ca = Ca::new("Slate server CA");
    let ca_file = write(d, "ca.crt", &server_ca.pem());
    install_server_cert(d, &server_ca);
    let client_ca = Ca::new("Slate client CA");
    let client_ca_file = write(d, "client-ca.crt", &client_ca.pem());
    let (cert, key) = client_ca.sign(ExtendedKeyUsagePurpose::ClientAuth);
    let (client_cert, client_key) = (write(d, "client.crt", &cert), write(d, "client.key", &key));
    let stranger = Ca::new("Someone else");
    let (cert, key) = stranger.sign(ExtendedKeyUsagePurpose::ClientAuth);
    let (other_cert, other_key) = (write(d, "other.crt", &cert), write(d, "other.key", &key));

    let slate = Slate::start(&tls_config(d, Some(&client_ca_file)));
    let url = format!("https://127.0.0.1:{}/health/live", slate.http.port());
    let ca = ["--cacert", ca_file.to_str().unwrap()];
    let with = |c: &Path, k: &Path| {
        curl(&url, &[&ca[..], &["--cert", c.to_str().unwrap(), "--key", k.to_str().unwrap()]].concat())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while with(&client_cert, &client_key).0 != 200 {
        assert!(Instant::now() < deadline, "not serving over mutual TLS; logs:\n{}", slate.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(curl(&url, &ca).0, 0, "no client certificate must fail");
    assert_eq!(with(&other_cert, &other_key).0, 0, "a certificate from another CA must fail");

    assert_eq!(grpcio_health(&slate, &ca_file, Some((&client_cert, &client_key))), SERVING);
    assert_eq!(grpcio_health(&slate, &ca_file, None), "UNAVAILABLE");
}
