//! Revocation: the gateway reads the device CA's CRL at start and again when the file
//! changes. A revoked device's open session is closed with ERROR AUTH_FAILED and its next
//! handshake refused; other devices carry on; a CRL file that cannot be read leaves the
//! previous list in force; a bad CRL at start is a clear error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;
use wenxiao_protocol::*;
use wenxiao_tests::device::{TestDevice, book_purchase};
use wenxiao_tests::env::{POS, POS2, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_crl_closes_the_revoked_session_and_refuses_its_handshake() {
    let mut env = TestEnv::sqlite();
    let ca = wenxiao_gateway::pki::DevCa::load(&env.path().join("pki")).unwrap();
    let crl_path = env.path().join("devices.crl");
    std::fs::write(&crl_path, ca.crl(&[], 1).unwrap()).unwrap();
    env.config.tls.device_crl_path = Some(crl_path.clone());
    env.config.tls.crl_reload_interval_ms = 100;
    let gw = env.start();
    let (cert_a, cert_b) = (env.device_cert(POS), env.device_cert(POS2));
    let connect = |cert: wenxiao_gateway::pki::PemPair, id| {
        let ca_pem = env.ca_pem();
        async move { TestDevice::connect(gw.device_addr, &ca_pem, Some(&cert), id).await }
    };
    let mut a = connect(cert_a.clone(), POS).await.unwrap();
    a.hello().await;
    let mut b = connect(cert_b.clone(), POS2).await.unwrap();
    b.hello().await;

    // A file that is not a CRL: the previous list stays, nobody is closed.
    std::fs::write(&crl_path, "not a CRL").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    a.send(book_purchase(POS, 1, 9_001, 1, 5_000)).await;
    assert_eq!(a.ack().await.status, TxnStatus::Stored);

    // A's certificate revoked: its session is closed, B's goes on.
    std::fs::write(&crl_path, ca.crl(&[&cert_a.cert_pem], 2).unwrap()).unwrap();
    a.expect_fatal(ErrorCode::AuthFailed).await;
    b.send(book_purchase(POS2, 1, 9_002, 1, 5_000)).await;
    assert_eq!(b.ack().await.status, TxnStatus::Stored);
    // A comes back with the revoked certificate: the handshake is refused.
    let refused = match connect(cert_a.clone(), POS).await {
        Err(_) => true,
        Ok(mut d) => d.try_hello().await.is_none(),
    };
    assert!(refused, "a revoked certificate got a session");
    // With a new certificate it is served again.
    let mut again = connect(env.device_cert(POS), POS).await.unwrap();
    assert_eq!(again.hello().await.stored_seq, Seq::new(1));
    drop((again, b));
    gw.shutdown().unwrap();

    // A bad CRL at start: the gateway says so and does not start.
    std::fs::write(
        &crl_path,
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .unwrap();
    let e = wenxiao_gateway::server::spawn(env.config.clone()).unwrap_err();
    assert!(format!("{e:#}").contains("devices.crl"), "{e:#}");
}
