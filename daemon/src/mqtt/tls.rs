//! TLS to the broker (`mqtts://`), through the system's OpenSSL by way of
//! `native-tls`: Debian patches libssl3 for the whole system, and rumqttc's
//! rustls feature brings crates with open advisories (docs/mqtt.md weighs
//! the two).
//!
//! The files of `[mqtt]` are read and parsed here, by the configuration's
//! check (which every start runs, as `check-config` does) and again when
//! the client starts, so that both say the same thing: the configuration
//! key and the path of a file that is missing or wrong, and what to do
//! about it. So a start reads the files and the system's roots twice;
//! the check keeps no connector to hand over.

use std::path::{Path, PathBuf};

use native_tls::{Certificate, Identity, Protocol, TlsConnector};

use crate::config::MqttConfig;

/// Why TLS could not be set up from `[mqtt]`'s files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("mqtt.{key} '{}': cannot read it: {source}", path.display())]
    Read {
        /// The configuration key that names it.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A file was read but does not hold what its key asks for.
    #[error("mqtt.{key} '{}': {reason}", path.display())]
    Invalid {
        /// The configuration key that names it.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it and what to do.
        reason: String,
    },
    /// Only one half of the client identity is configured.
    #[error(
        "mqtt.client_cert_file and mqtt.client_key_file go together: set both for mutual TLS, or neither"
    )]
    HalfIdentity,
    /// OpenSSL refused the combination (most often: the key is not the
    /// certificate's).
    #[error("cannot set up TLS{with}: {source}")]
    Build {
        /// The files involved, if any.
        with: String,
        /// What OpenSSL said.
        source: native_tls::Error,
    },
}

/// The connector for `config`'s broker: the system's roots, or only the
/// certificates of `ca_file` when it is set; the client certificate and
/// key when both are set. TLS 1.2 at least.
pub fn connector(config: &MqttConfig) -> Result<TlsConnector, TlsError> {
    let mut builder = TlsConnector::builder();
    builder.min_protocol_version(Some(Protocol::Tlsv12));
    if let Some(path) = &config.ca_file {
        // A private CA replaces the public ones: a broker certificate
        // bought for the same name from anyone else is not ours.
        builder.disable_built_in_roots(true);
        for cert in ca_certificates(path)? {
            builder.add_root_certificate(cert);
        }
    }
    let mut with = String::new();
    match (&config.client_cert_file, &config.client_key_file) {
        (None, None) => {}
        (Some(cert), Some(key)) => {
            builder.identity(identity(cert, key)?);
            with = format!(
                " with mqtt.client_cert_file '{}' and mqtt.client_key_file '{}' (is the key the certificate's?)",
                cert.display(),
                key.display()
            );
        }
        _ => return Err(TlsError::HalfIdentity),
    }
    builder
        .build()
        .map_err(|source| TlsError::Build { with, source })
}

/// Every certificate of a PEM bundle (`ca_file`), at least one.
fn ca_certificates(path: &Path) -> Result<Vec<Certificate>, TlsError> {
    let text = read_pem("ca_file", path)?;
    let (_, certs) = certificates(
        "ca_file",
        path,
        &text,
        "; give the CA certificate that signed the broker's",
    )?;
    Ok(certs)
}

/// The certificate blocks of `text` (read from `key`'s `path`) and each one
/// parsed: at least one, every one readable.
fn certificates<'t>(
    key: &'static str,
    path: &Path,
    text: &'t str,
    advice: &str,
) -> Result<(Vec<&'t str>, Vec<Certificate>), TlsError> {
    if text.contains("-----BEGIN TRUSTED CERTIFICATE-----") {
        // Read as no certificate at all, it would leave a CA out unseen.
        return Err(invalid(
            key,
            path,
            "holds an OpenSSL TRUSTED CERTIFICATE, whose trust settings this daemon cannot read; \
             give it as a plain certificate: openssl x509 -in FILE -out FILE.pem"
                .into(),
        ));
    }
    let blocks = pem_blocks(text, "CERTIFICATE").map_err(|r| invalid(key, path, r))?;
    if blocks.is_empty() {
        return Err(invalid(
            key,
            path,
            format!("holds no PEM certificate (-----BEGIN CERTIFICATE-----){advice}"),
        ));
    }
    let certs = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            Certificate::from_pem(b.as_bytes()).map_err(|e| {
                invalid(
                    key,
                    path,
                    format!("certificate #{} cannot be parsed: {e}", i + 1),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    Ok((blocks, certs))
}

/// The client certificate (with its chain, if the file holds one) and its
/// PKCS#8 key.
fn identity(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
    let key_text = read_pem("client_key_file", key)?;
    let keys =
        pem_blocks(&key_text, "PRIVATE KEY").map_err(|r| invalid("client_key_file", key, r))?;
    let key_pem = match keys[..] {
        [] => return Err(invalid("client_key_file", key, key_advice(&key_text))),
        [one] => one,
        // Taking the first would guess, and a wrong guess fails only at
        // the broker.
        _ => {
            return Err(invalid(
                "client_key_file",
                key,
                format!(
                    "holds {} private keys; give only the one of client_cert_file",
                    keys.len()
                ),
            ));
        }
    };
    let cert_text = read_pem("client_cert_file", cert)?;
    let (blocks, _) = certificates("client_cert_file", cert, &cert_text, "")?;
    Identity::from_pkcs8(blocks.join("\n").as_bytes(), key_pem.as_bytes()).map_err(|e| {
        invalid(
            "client_key_file",
            key,
            format!("the key cannot be parsed: {e}"),
        )
    })
}

fn key_advice(text: &str) -> String {
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        "the key is encrypted; the daemon needs it unencrypted (protect the file by its owner and mode instead): openssl pkcs8 -in KEY -out KEY.pem".into()
    } else if text.contains("-----BEGIN RSA PRIVATE KEY-----")
        || text.contains("-----BEGIN EC PRIVATE KEY-----")
    {
        "the key is in the old RSA/EC form; give it as PKCS#8 (-----BEGIN PRIVATE KEY-----): openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pem".into()
    } else {
        "holds no PEM private key (-----BEGIN PRIVATE KEY-----)".into()
    }
}

fn read_pem(key: &'static str, path: &Path) -> Result<String, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_path_buf(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|_| {
        invalid(
            key,
            path,
            "is not PEM text (a DER file? convert it: openssl x509 -inform der -in FILE -out FILE.pem)"
                .into(),
        )
    })
}

fn invalid(key: &'static str, path: &Path, reason: String) -> TlsError {
    TlsError::Invalid {
        key,
        path: path.to_path_buf(),
        reason,
    }
}

/// The PEM blocks of `label` in `text`, each from its BEGIN line to its
/// END line inclusive, in order; text around and between them (comments,
/// `openssl x509 -text` output) is skipped. A block with no END line (a
/// file cut short) is an error, not a block fewer.
fn pem_blocks<'a>(text: &'a str, label: &str) -> Result<Vec<&'a str>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(b) = rest.find(&begin) {
        let Some(e) = rest[b..].find(&end) else {
            return Err(format!(
                "block {} ({begin}) has no {end} line: is the file cut short?",
                out.len() + 1
            ));
        };
        let stop = b + e + end.len();
        out.push(&text[offset + b..offset + stop]);
        offset += stop;
        rest = &rest[stop..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> MqttConfig {
        let mut c: MqttConfig =
            toml::from_str("broker = \"mqtts://b\"\nsite = \"s\"\n").expect("minimal [mqtt]");
        c.ca_file = ca.map(Path::to_path_buf);
        c.client_cert_file = cert.map(Path::to_path_buf);
        c.client_key_file = key.map(Path::to_path_buf);
        c
    }

    fn scratch(name: &str, text: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mfd-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    #[test]
    fn pem_blocks_are_found_between_other_text_and_in_order() {
        let text = "Certificate:\n  Data: ...\n-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n\
                    junk\n-----BEGIN PRIVATE KEY-----\nKKK\n-----END PRIVATE KEY-----\n\
                    -----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n";
        assert_eq!(
            pem_blocks(text, "CERTIFICATE"),
            Ok(vec![
                "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----",
                "-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----",
            ])
        );
        assert_eq!(
            pem_blocks(text, "PRIVATE KEY"),
            Ok(vec![
                "-----BEGIN PRIVATE KEY-----\nKKK\n-----END PRIVATE KEY-----"
            ])
        );
        assert_eq!(pem_blocks("no pem here", "CERTIFICATE"), Ok(vec![]));
    }

    #[test]
    fn a_bundle_cut_short_is_refused_not_read_as_one_certificate_fewer() {
        let cut = scratch(
            "cut.pem",
            b"-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nBB",
        );
        let e = connector(&config(Some(&cut), None, None)).expect_err("cut short");
        let text = e.to_string();
        assert!(
            text.contains("mqtt.ca_file") && text.contains("block 2") && text.contains("cut short"),
            "{text}"
        );
    }

    #[test]
    fn a_connector_is_built_from_the_system_roots_without_files() {
        connector(&config(None, None, None)).expect("a connector with the system's roots");
    }

    #[test]
    fn a_missing_ca_file_is_named_with_its_key_and_path() {
        let missing = std::env::temp_dir().join("mfd-no-such-ca.pem");
        let e = connector(&config(Some(&missing), None, None)).expect_err("missing");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "mqtt.ca_file '{}': cannot read it",
                missing.display()
            )),
            "{text}"
        );
    }

    #[test]
    fn a_ca_file_without_a_certificate_or_with_a_broken_one_says_which() {
        let empty = scratch("empty.pem", b"# nothing\n");
        let e = connector(&config(Some(&empty), None, None)).expect_err("no cert");
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
        let broken = scratch(
            "broken.pem",
            b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
        );
        let e = connector(&config(Some(&broken), None, None)).expect_err("broken");
        assert!(
            e.to_string().contains("certificate #1 cannot be parsed"),
            "{e}"
        );
        let der = scratch("der.pem", &[0x30, 0x82, 0xff, 0xfe]);
        let e = connector(&config(Some(&der), None, None)).expect_err("binary");
        assert!(e.to_string().contains("is not PEM text"), "{e}");
    }

    #[test]
    fn a_trusted_certificate_or_a_second_key_is_refused_not_left_out() {
        let trusted = scratch(
            "trusted.pem",
            b"-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n\
              -----BEGIN TRUSTED CERTIFICATE-----\nBBB\n-----END TRUSTED CERTIFICATE-----\n",
        );
        let e = connector(&config(Some(&trusted), None, None)).expect_err("trusted");
        assert!(
            e.to_string().contains("TRUSTED CERTIFICATE") && e.to_string().contains("openssl x509"),
            "{e}"
        );
        let cert = scratch(
            "two-keys-cert.pem",
            b"-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n",
        );
        let keys = scratch(
            "two-keys.pem",
            b"-----BEGIN PRIVATE KEY-----\nAAA\n-----END PRIVATE KEY-----\n\
              -----BEGIN PRIVATE KEY-----\nBBB\n-----END PRIVATE KEY-----\n",
        );
        let e = connector(&config(None, Some(&cert), Some(&keys))).expect_err("two keys");
        assert!(
            e.to_string().contains("mqtt.client_key_file")
                && e.to_string().contains("2 private keys"),
            "{e}"
        );
    }

    #[test]
    fn half_a_client_identity_is_refused() {
        let cert = scratch("half.pem", b"");
        let e = connector(&config(None, Some(&cert), None)).expect_err("half");
        assert!(matches!(e, TlsError::HalfIdentity), "{e}");
    }

    #[test]
    fn keys_in_forms_native_tls_cannot_read_get_a_conversion_command() {
        assert!(key_advice("-----BEGIN RSA PRIVATE KEY-----\n").contains("pkcs8 -topk8"));
        assert!(key_advice("-----BEGIN EC PRIVATE KEY-----\n").contains("pkcs8 -topk8"));
        assert!(key_advice("-----BEGIN ENCRYPTED PRIVATE KEY-----\n").contains("encrypted"));
        assert!(key_advice("hello").contains("holds no PEM private key"));
    }
}
