//! Server-side CPU cost of a full TLS 1.3 handshake with the broker's TLS configuration
//! (rustls + aws-lc-rs, `coremq certs dev` ECDSA P-256 certificate), in memory: no sockets,
//! no kernel. Only the server's calls are timed (`iter_custom`), so the figure is the crypto
//! and protocol work one shard spends per handshake. Run: `cargo bench --bench tls_handshake`.

// criterion_group! generates public functions without docs.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use coremq::transport::tls::{server_config, ClientAuth, TlsSettings};
use criterion::{criterion_group, criterion_main, Criterion};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

fn setup() -> (Arc<rustls::ServerConfig>, Arc<ClientConfig>) {
    coremq::transport::tls::install_provider();
    let dir = tempfile::tempdir().unwrap().keep();
    coremq::cli::certs::write_dev_certs(&dir).unwrap();
    let s = TlsSettings {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        min_tls_13: true,
        client_ca: None,
        client_auth: ClientAuth::None,
        alpn: vec![b"mqtt".to_vec()],
    };
    let (server, _) = server_config(&s).unwrap();
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut client = ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    client.resumption = rustls::client::Resumption::disabled();
    (server, Arc::new(client))
}

/// One full handshake; returns the time spent in server-side calls.
fn handshake(server_cfg: &Arc<rustls::ServerConfig>, client_cfg: &Arc<ClientConfig>) -> Duration {
    let mut client =
        ClientConnection::new(client_cfg.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut server_time = Duration::ZERO;
    let t = Instant::now();
    let mut server = ServerConnection::new(server_cfg.clone()).unwrap();
    server_time += t.elapsed();
    let mut buf = Vec::with_capacity(16 * 1024);
    while client.is_handshaking() || server.is_handshaking() {
        buf.clear();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            let t = Instant::now();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
            }
            server.process_new_packets().unwrap();
            server_time += t.elapsed();
        }
        buf.clear();
        let t = Instant::now();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        server_time += t.elapsed();
        if !buf.is_empty() {
            let mut rd = &buf[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
            }
            client.process_new_packets().unwrap();
        }
    }
    server_time
}

fn bench(c: &mut Criterion) {
    let (server, client) = setup();
    c.bench_function("tls13_full_handshake_server_side", |b| {
        b.iter_custom(|n| (0..n).map(|_| handshake(&server, &client)).sum())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
