//! Tokens, passwords and keys never show: not in `Debug` or `Display` of
//! the configuration, the registry or its URL, nor in the errors a bad URL
//! or a bad TLS file produces.

use trellis::config::Config;
use trellis::tls::TlsConfig;
use trellis::{Registry, RegistryUrl, Secret};

const SECRETS: [&str; 3] = ["hunter2", "pa55word", "BEGIN PRIVATE KEY"];

fn assert_hidden(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} shows `{secret}`: {text}");
    }
}

#[test]
fn the_configuration_shows_its_registry_url_redacted() {
    let config = Config {
        registry: RegistryUrl::from("consul://ops:pa55word@10.0.0.5:8500?token=hunter2&wait=5s"),
        ..Config::default()
    };
    let debug = format!("{config:?}");
    assert_hidden("Config's Debug", &debug);
    assert!(debug.contains("consul://ops:REDACTED@10.0.0.5:8500?token=REDACTED&wait=5s"), "{debug}");
    assert_eq!(config.registry.to_string(), "consul://ops:REDACTED@10.0.0.5:8500?token=REDACTED&wait=5s");
    assert_eq!(config.registry.expose(), "consul://ops:pa55word@10.0.0.5:8500?token=hunter2&wait=5s");
}

#[test]
fn errors_about_a_registry_url_hide_its_secrets() {
    for url in [
        "zookeeper://ops:pa55word@10.0.0.5:2181?token=hunter2",
        "local:///tmp/r?token=hunter2&colour=red",
        "etcd://root:pa55word@10.0.0.5:notaport",
        "consul://10.0.0.5:8500?token=hunter2&nosuch=1",
    ] {
        let err = Registry::from_url(url).expect_err(url);
        assert_hidden("a registry error", &format!("{err} {err:?}"));
        assert!(err.to_string().contains("REDACTED"), "{err}");
    }
}

#[cfg(feature = "consul")]
#[test]
fn a_consul_registry_never_shows_its_token() {
    let registry = Registry::from_url("consul://127.0.0.1:8500?token=hunter2").expect("registry");
    assert_hidden("Registry's Debug", &format!("{registry:?}"));
    assert_hidden("Registry::url", registry.url());
}

#[test]
fn secrets_print_as_redacted() {
    let token = Secret::new("hunter2".to_owned());
    assert_eq!(format!("{token} {token:?} {:?}", Some(&token)), "REDACTED REDACTED Some(REDACTED)");
}

#[tokio::test]
async fn tls_errors_name_the_key_file_but_never_show_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let other = rcgen::KeyPair::generate().expect("key");
    let cert_path = dir.path().join("svc.pem");
    let key_path = dir.path().join("svc.key");
    std::fs::write(&cert_path, cert.pem()).expect("write");
    std::fs::write(&key_path, other.serialize_pem()).expect("write");
    let tls = TlsConfig { cert: Some(cert_path), key: Some(key_path), ..TlsConfig::default() };
    assert_hidden("TlsConfig's Debug", &format!("{tls:?}"));
    let err = trellis::Server::builder().tls(tls).bind().await.expect_err("wrong key");
    let text = format!("{err} {err:?}");
    assert_hidden("a TLS error", &text);
    assert!(text.contains("svc.key") && text.contains("does not match"), "{text}");
}
