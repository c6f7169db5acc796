//! TLS to Postgres: libpq's `sslmode` and `sslrootcert`, the rustls connector every connection
//! uses, and TLS failures worded so that an operator knows what to fix.
//!
//! Owns reading the TLS settings out of a connection string (tokio-postgres itself knows only
//! `disable`/`prefer`/`require` and rejects `verify-ca`, `verify-full` and `sslrootcert`), the
//! certificate checks each mode asks for, and the explanation of TLS errors. Calls nothing else
//! in the crate; `db` builds every connection with it.
//!
//! The modes mean what they mean in libpq:
//! - `disable`: plain TCP.
//! - `allow`, `prefer` (the default): TLS if the server offers it, else plain. The certificate is
//!   not checked (unless `sslrootcert` names a file, as in libpq). Unlike libpq, a failed
//!   handshake is not retried without TLS: nothing is sent in clear after TLS went wrong.
//! - `require`: TLS or nothing; the certificate is not checked, unless `sslrootcert` names a
//!   file, in which case the chain is checked as with `verify-ca` (libpq does the same).
//! - `verify-ca`: TLS, and the certificate must chain to a trusted CA; the host name is not
//!   checked.
//! - `verify-full`: as `verify-ca`, and the certificate must name the host in the connection
//!   string (a DNS name, or an IP address in its subjectAltName).
//!
//! `sslrootcert` is a PEM file of CA certificates, or `system`; the verifying modes use the
//! system's trust store when it is not set. As in libpq 16, `sslrootcert=system` makes
//! `verify-full` the default and refuses weaker modes: a public CA vouches for everybody's
//! certificate, so only the host name check makes it mean anything.
//!
//! Unix-domain sockets never use TLS (the server does not offer it there); libpq ignores
//! `sslmode` for them, and so does pgcable.

use std::convert::Infallible;
use std::error::Error;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::Socket;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// libpq tries plain first, then TLS; pgcable treats it as `prefer` (TLS first), which works
    /// wherever `allow` works and encrypts where it can.
    Allow,
    /// TLS if the server offers it, else plain. libpq's default.
    Prefer,
    /// TLS, certificate not checked (unless `sslrootcert` names a file).
    Require,
    /// TLS, certificate chain checked, host name not.
    VerifyCa,
    /// TLS, certificate chain and host name checked.
    VerifyFull,
}

impl SslMode {
    /// The mode named `s` in a connection string.
    pub fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// The name used in connection strings.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres is told: whether to ask for TLS, and whether to insist.
    pub fn negotiation(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Allow | SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

/// Where the CA certificates that vouch for the server come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// The system's trust store (e.g. /etc/ssl/certs; `SSL_CERT_FILE` overrides it).
    System,
    /// A PEM file of CA certificates (`sslrootcert=/path`).
    File(PathBuf),
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Not at all: encryption against eavesdroppers, no protection against impersonation.
    Nothing,
    /// It must chain to a trusted CA.
    Chain,
    /// It must chain to a trusted CA and name the host.
    ChainAndName,
}

/// The TLS settings of one connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The mode in effect (`prefer` if the string sets none).
    pub mode: SslMode,
    /// Where trusted CAs come from, when the certificate is checked.
    pub roots: Roots,
    /// What is checked.
    pub verify: Verify,
}

impl Default for Settings {
    /// libpq's default: `sslmode=prefer`, nothing checked.
    fn default() -> Settings {
        Settings {
            mode: SslMode::Prefer,
            roots: Roots::System,
            verify: Verify::Nothing,
        }
    }
}

impl Settings {
    /// From the values of `sslmode` and `sslrootcert`, if the string sets them.
    pub fn resolve(mode: Option<&str>, root_cert: Option<&str>) -> Result<Settings, String> {
        let given = match mode {
            None => None,
            Some(m) => Some(SslMode::parse(m).ok_or_else(|| {
                format!(
                    "sslmode={m} is not a TLS mode: use disable, allow, prefer, require, verify-ca or verify-full"
                )
            })?),
        };
        let roots = match root_cert {
            None => None,
            Some("") => {
                return Err(
                    "sslrootcert is empty: name a PEM file of CA certificates, or `system`".into(),
                )
            }
            Some("system") => Some(Roots::System),
            Some(path) => Some(Roots::File(PathBuf::from(path))),
        };
        let mode = match (&roots, given) {
            (Some(Roots::System), None) => SslMode::VerifyFull,
            (Some(Roots::System), Some(SslMode::VerifyFull)) => SslMode::VerifyFull,
            (Some(Roots::System), Some(m)) => {
                return Err(format!(
                    "sslrootcert=system needs sslmode=verify-full, not {} (as in libpq): the system's public CAs vouch for anybody's certificate, so only the host name check makes TLS safe",
                    m.as_str()
                ))
            }
            (_, m) => m.unwrap_or(SslMode::Prefer),
        };
        let file_given = matches!(roots, Some(Roots::File(_)));
        let verify = match mode {
            SslMode::Disable => Verify::Nothing,
            SslMode::Allow | SslMode::Prefer | SslMode::Require if file_given => Verify::Chain,
            SslMode::Allow | SslMode::Prefer | SslMode::Require => Verify::Nothing,
            SslMode::VerifyCa => Verify::Chain,
            SslMode::VerifyFull => Verify::ChainAndName,
        };
        Ok(Settings {
            mode,
            roots: roots.unwrap_or(Roots::System),
            verify,
        })
    }

    /// Where trusted CAs come from, for messages: `the CA file /x` or `the system's trust store`.
    pub fn trust(&self) -> String {
        match &self.roots {
            Roots::System => "the system's trust store".to_string(),
            Roots::File(path) => format!("the CA file sslrootcert={}", path.display()),
        }
    }

    /// What the mode checks, for reports: e.g. `certificate chain and host name verified
    /// against the system's trust store`.
    pub fn checks(&self) -> String {
        match self.verify {
            Verify::Nothing => "the server's certificate is not verified".to_string(),
            Verify::Chain => format!(
                "certificate chain verified against {}, host name not checked",
                self.trust()
            ),
            Verify::ChainAndName => format!(
                "certificate chain and host name verified against {}",
                self.trust()
            ),
        }
    }
}

/// libpq TLS options pgcable does not implement, and what they are for.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("sslcert", "client certificates"),
    ("sslkey", "client certificates"),
    ("sslpassword", "client certificates"),
    ("sslcertmode", "client certificates"),
    ("sslcrl", "certificate revocation lists"),
    ("sslcrldir", "certificate revocation lists"),
    ("sslsni", "turning SNI off"),
    ("sslcompression", "TLS compression"),
    (
        "ssl_min_protocol_version",
        "TLS version limits; pgcable speaks TLS 1.2 and 1.3",
    ),
    (
        "ssl_max_protocol_version",
        "TLS version limits; pgcable speaks TLS 1.2 and 1.3",
    ),
    ("requiressl", "a pre-9.x spelling of sslmode=require"),
];

fn unsupported(key: &str) -> Result<(), String> {
    match UNSUPPORTED.iter().find(|(k, _)| *k == key) {
        Some((k, what)) => Err(format!(
            "DATABASE_URL sets {k}, which pgcable does not support ({what}); remove it"
        )),
        None => Ok(()),
    }
}

/// Takes `sslmode` and `sslrootcert` out of a connection string (URL or key=value form): the
/// rest goes to tokio-postgres, the settings to [`connector`].
pub fn split(url: &str) -> Result<(String, Settings), String> {
    let (rest, mode, root_cert) =
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            split_url(url)?
        } else {
            split_key_values(url)?
        };
    let settings = Settings::resolve(mode.as_deref(), root_cert.as_deref())
        .map_err(|e| format!("DATABASE_URL: {e}"))?;
    Ok((rest, settings))
}

type Parts = (String, Option<String>, Option<String>);

fn split_url(url: &str) -> Result<Parts, String> {
    let Some((head, query)) = url.split_once('?') else {
        return Ok((url.to_string(), None, None));
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| format!("DATABASE_URL: the parameter {s:?} is not UTF-8 once decoded"))
    };
    let (mut mode, mut root_cert) = (None, None);
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match decode(key)?.as_str() {
            "sslmode" => mode = Some(decode(value)?),
            "sslrootcert" => root_cert = Some(decode(value)?),
            other => {
                unsupported(other)?;
                kept.push(pair);
            }
        }
    }
    let rest = if kept.is_empty() {
        head.to_string()
    } else {
        format!("{head}?{}", kept.join("&"))
    };
    Ok((rest, mode, root_cert))
}

/// One `key = value` of a key=value connection string, with where it is in the string.
struct Pair {
    key: String,
    value: String,
    start: usize,
    end: usize,
}

/// libpq's key=value syntax: keys and values separated by whitespace; a value is a run of
/// non-blank characters or a single-quoted string; a backslash escapes the next character.
fn pairs(s: &str) -> Result<Vec<Pair>, String> {
    let bytes: Vec<(usize, char)> = s.char_indices().collect();
    let at = |i: usize| bytes.get(i).map(|(_, c)| *c);
    let offset = |i: usize| bytes.get(i).map_or(s.len(), |(o, _)| *o);
    let bad = |why: &str| format!("DATABASE_URL is not a valid Postgres connection string: {why}");
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        if at(i).is_none() {
            return Ok(out);
        }
        let start = offset(i);
        let mut key = String::new();
        while let Some(c) = at(i).filter(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
            i += 1;
        }
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        if at(i) != Some('=') {
            return Err(bad(&format!("missing \"=\" after {key:?}")));
        }
        i += 1;
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        let mut value = String::new();
        if at(i) == Some('\'') {
            i += 1;
            loop {
                match at(i) {
                    None => return Err(bad(&format!("unterminated quoted value of {key:?}"))),
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some('\\') => {
                        if let Some(c) = at(i + 1) {
                            value.push(c);
                        }
                        i += 2;
                    }
                    Some(c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while let Some(c) = at(i).filter(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(next) = at(i + 1) {
                        value.push(next);
                    }
                    i += 2;
                } else {
                    value.push(c);
                    i += 1;
                }
            }
        }
        out.push(Pair {
            key,
            value,
            start,
            end: offset(i.min(bytes.len())),
        });
    }
}

/// `s` (key=value form) with the value of every `password` replaced by `***`; unchanged if it
/// does not parse.
pub fn redact_key_values(s: &str) -> String {
    let Ok(pairs) = pairs(s) else {
        return s.to_string();
    };
    let mut out = String::new();
    let mut copied_to = 0;
    for pair in pairs.iter().filter(|p| p.key == "password") {
        out.push_str(&s[copied_to..pair.start]);
        out.push_str("password=***");
        copied_to = pair.end;
    }
    out.push_str(&s[copied_to..]);
    out
}

fn split_key_values(s: &str) -> Result<Parts, String> {
    let (mut mode, mut root_cert) = (None, None);
    let mut rest = String::new();
    let mut copied_to = 0;
    for pair in pairs(s)? {
        let take = match pair.key.as_str() {
            "sslmode" => {
                mode = Some(pair.value);
                true
            }
            "sslrootcert" => {
                root_cert = Some(pair.value);
                true
            }
            other => {
                unsupported(other)?;
                false
            }
        };
        if take {
            rest.push_str(&s[copied_to..pair.start]);
            copied_to = pair.end;
        }
    }
    rest.push_str(&s[copied_to..]);
    Ok((rest, mode, root_cert))
}

/// The crypto provider: ring (pure Rust and assembly; no cmake, no OpenSSL).
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The system's trust store, read once per process.
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static SYSTEM: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    SYSTEM
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                return Err(format!(
                    "the system's trust store has no CA certificates{why}: install the ca-certificates package, or set sslrootcert to the CA file of the server"
                ));
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

/// The CA certificates of a PEM file.
fn file_roots(path: &std::path::Path) -> Result<Arc<RootCertStore>, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read sslrootcert={shown}: {}", pem_error(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot read sslrootcert={shown}: {}", pem_error(&e)))?;
    if certs.is_empty() {
        return Err(format!(
            "sslrootcert={shown} holds no certificate: it must be PEM (-----BEGIN CERTIFICATE-----)"
        ));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| {
            format!("sslrootcert={shown} holds a certificate that cannot be a CA: {e}")
        })?;
    }
    Ok(Arc::new(roots))
}

fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        other => format!("not a PEM file ({other:?})"),
    }
}

/// The verifier of the modes that do not check the host name: with `roots`, the chain up to a
/// trusted CA (`verify-ca`, or `require`/`prefer` with a CA file); without, any certificate
/// (`require`, `prefer`). Either way it checks that the server holds the key of the
/// certificate it showed.
#[derive(Debug)]
struct WithoutName {
    roots: Option<Arc<RootCertStore>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for WithoutName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Builds the TLS client for `settings`: reads the CA certificates it needs (an error if the
/// file is missing or holds none), so a bad `sslrootcert` fails at start, not on first use.
pub fn connector(settings: &Settings) -> Result<MakeTls, String> {
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let roots = match (settings.verify, &settings.roots) {
        (Verify::Nothing, _) => None,
        (_, Roots::System) => Some(system_roots()?),
        (_, Roots::File(path)) => Some(file_roots(path)?),
    };
    let verifier: Arc<dyn ServerCertVerifier> = match (settings.verify, roots) {
        (Verify::Chain, Some(roots)) => Arc::new(WithoutName {
            roots: Some(roots),
            algorithms,
        }),
        (Verify::ChainAndName, Some(roots)) => {
            WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| format!("cannot set up certificate verification: {e}"))?
        }
        _ => Arc::new(WithoutName {
            roots: None,
            algorithms,
        }),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // What libpq 17 sends; PostgreSQL 17 insists on it for sslnegotiation=direct.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(MakeTls {
        inner: MakeRustlsConnect::new(config),
        seen: None,
    })
}

/// tokio-postgres's TLS hook: rustls through tokio-postgres-rustls, optionally noting whether
/// the handshake happened (see [`MakeTls::watched`]).
#[derive(Clone)]
pub struct MakeTls {
    inner: MakeRustlsConnect,
    seen: Option<Arc<AtomicBool>>,
}

impl MakeTls {
    /// A copy that records whether the connection it opens completes a TLS handshake: the
    /// flag is true once connected over TLS, false for a plain connection. Use one copy per
    /// connection.
    pub fn watched(&self) -> (MakeTls, Arc<AtomicBool>) {
        let seen = Arc::new(AtomicBool::new(false));
        (
            MakeTls {
                inner: self.inner.clone(),
                seen: Some(seen.clone()),
            },
            seen,
        )
    }
}

type Inner = MakeRustlsConnect;
/// The TLS stream of a connection (used or not: tokio-postgres wraps both kinds).
pub type Stream = <Inner as MakeTlsConnect<Socket>>::Stream;

impl MakeTlsConnect<Socket> for MakeTls {
    type Stream = Stream;
    type TlsConnect = Connect;
    type Error = Infallible;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Connect, Infallible> {
        // One call per attempt (host, address): only the last attempt's outcome counts.
        if let Some(seen) = &self.seen {
            seen.store(false, Ordering::Relaxed);
        }
        let inner = <Inner as MakeTlsConnect<Socket>>::make_tls_connect(&mut self.inner, domain)?;
        Ok(Connect {
            inner,
            seen: self.seen.clone(),
        })
    }
}

/// One handshake (see [`MakeTls`]).
pub struct Connect {
    inner: <Inner as MakeTlsConnect<Socket>>::TlsConnect,
    seen: Option<Arc<AtomicBool>>,
}

type Handshake = Pin<Box<dyn Future<Output = io::Result<Stream>> + Send>>;

impl TlsConnect<Socket> for Connect {
    type Stream = Stream;
    type Error = io::Error;
    type Future = Handshake;

    fn connect(self, socket: Socket) -> Handshake {
        let handshake = self.inner.connect(socket);
        let seen = self.seen;
        Box::pin(async move {
            let stream = handshake.await?;
            if let Some(seen) = seen {
                seen.store(true, Ordering::Relaxed);
            }
            Ok(stream)
        })
    }
}

/// Whether `e` (or one of its causes) is about TLS: a failed handshake, a rejected
/// certificate, or a server that will not do TLS when it was required, or requires it.
pub fn is_tls_failure(e: &(dyn Error + 'static)) -> bool {
    explain(&Settings::default(), e).is_some()
}

/// One line that says what went wrong with TLS and what to do, if `e` is a TLS failure.
pub fn explain(settings: &Settings, e: &(dyn Error + 'static)) -> Option<String> {
    let mode = settings.mode.as_str();
    let mut cause: Option<&(dyn Error + 'static)> = Some(e);
    while let Some(err) = cause {
        if let Some(r) = rustls_error(err) {
            return Some(explain_rustls(settings, r));
        }
        if let Some(db) = err.downcast_ref::<tokio_postgres::error::DbError>() {
            let message = db.message();
            if message.contains("pg_hba.conf") && message.ends_with("no encryption") {
                return Some(if settings.mode == SslMode::Disable {
                    format!(
                        "TLS: the server requires TLS for this connection (pg_hba.conf accepts only encrypted connections from here: {message}), but DATABASE_URL sets sslmode=disable; use sslmode=verify-full (or require)"
                    )
                } else {
                    format!(
                        "TLS: the server requires TLS for this connection (pg_hba.conf: {message}) but did not offer it with sslmode={mode}; set sslmode=require or stronger, and check that the server runs with ssl = on"
                    )
                });
            }
        }
        let text = err.to_string();
        if text == "server does not support TLS" {
            return Some(format!(
                "TLS: the server does not accept TLS connections, but sslmode={mode} requires TLS; turn on ssl in the server's postgresql.conf (managed services: enable TLS/SSL), or on a trusted private network use sslmode=prefer"
            ));
        }
        if text == "no hostname provided for TLS handshake" {
            return Some(format!(
                "TLS: sslmode={mode} needs a host name to check the certificate against, and DATABASE_URL has only hostaddr; add host=<the name on the server's certificate>"
            ));
        }
        cause = err.source();
    }
    None
}

/// The rustls error inside `e`: tokio-rustls hands it over wrapped in an `io::Error`.
fn rustls_error<'a>(e: &'a (dyn Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        return Some(r);
    }
    e.downcast_ref::<io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

fn explain_rustls(settings: &Settings, e: &rustls::Error) -> String {
    let mode = settings.mode.as_str();
    let trust = settings.trust();
    let rejected = "TLS: the server's certificate was rejected";
    match e {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => format!(
                "{rejected}: it is not signed by a CA in {trust} (unknown issuer; sslmode={mode}); set sslrootcert to the CA certificate that signed the server's certificate (managed Postgres services publish theirs)"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!(
                "{rejected}: it does not name the host in DATABASE_URL ({cert}; sslmode={mode} checks the name); connect with a host name the certificate names, or use sslmode=verify-ca to check only the CA"
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => format!(
                "{rejected}: it has expired ({cert}); renew the server's certificate, and check this machine's clock"
            ),
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => format!(
                "{rejected}: it is not valid yet ({cert}); check this machine's clock and the server's"
            ),
            CertificateError::Revoked => format!("{rejected}: it has been revoked"),
            other => format!("{rejected} (sslmode={mode}, CAs from {trust}): {other}"),
        },
        rustls::Error::AlertReceived(alert) => format!(
            "TLS: the server ended the handshake ({alert:?}): it may not accept this client's TLS versions or ciphers (pgcable speaks TLS 1.2 and 1.3); see the server's log"
        ),
        rustls::Error::PeerIncompatible(why) => format!(
            "TLS: the server's TLS is incompatible with pgcable's ({why:?}; pgcable speaks TLS 1.2 and 1.3 with modern ciphers)"
        ),
        other => format!("TLS handshake with the server failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> (String, Settings) {
        split(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn default_is_prefer_without_checks() {
        let (rest, s) = settings("postgres://u@h/d");
        assert_eq!(rest, "postgres://u@h/d");
        assert_eq!(s.mode, SslMode::Prefer);
        assert_eq!(s.verify, Verify::Nothing);
    }

    #[test]
    fn url_parameters_are_taken_out() {
        let (rest, s) = settings(
            "postgres://u:p@h:5432/d?application_name=x&sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&connect_timeout=3",
        );
        assert_eq!(
            rest,
            "postgres://u:p@h:5432/d?application_name=x&connect_timeout=3"
        );
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(s.verify, Verify::ChainAndName);
        assert_eq!(s.roots, Roots::File("/tmp/ca.pem".into()));

        let (rest, s) = settings("postgresql://h/d?sslmode=verify-ca");
        assert_eq!(rest, "postgresql://h/d");
        assert_eq!((s.verify, s.roots), (Verify::Chain, Roots::System));
    }

    #[test]
    fn key_value_pairs_are_taken_out() {
        let (rest, s) =
            settings("host=h sslmode = 'verify-full' sslrootcert='/a b/c\\'s.pem' dbname=d");
        assert_eq!(rest, "host=h   dbname=d");
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(s.roots, Roots::File("/a b/c's.pem".into()));
        let parsed: Result<tokio_postgres::Config, _> = rest.parse();
        assert!(parsed.is_ok());

        let (rest, s) = settings("host=h user=u");
        assert_eq!((rest.as_str(), s.mode), ("host=h user=u", SslMode::Prefer));
        assert!(split("host=h sslmode").is_err());
        assert!(split("host=h sslrootcert='x").is_err());
    }

    #[test]
    fn libpq_rules() {
        // require with a CA file checks the chain (libpq: "as verify-ca").
        let s =
            Settings::resolve(Some("require"), Some("/ca.pem")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.verify, Verify::Chain);
        let s = Settings::resolve(Some("require"), None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.verify, Verify::Nothing);
        // sslrootcert=system: verify-full by default, weaker modes refused.
        let s = Settings::resolve(None, Some("system")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (s.mode, s.verify),
            (SslMode::VerifyFull, Verify::ChainAndName)
        );
        assert!(Settings::resolve(Some("require"), Some("system")).is_err());
        assert!(Settings::resolve(Some("verify-ca"), Some("system")).is_err());
        // Typos are errors that name the modes.
        let e = Settings::resolve(Some("verify_full"), None)
            .err()
            .unwrap_or_default();
        assert!(e.contains("verify-full"), "{e}");
    }

    #[test]
    fn unsupported_options_are_named() {
        let e = split("postgres://h/d?sslcert=/c.pem")
            .err()
            .unwrap_or_default();
        assert!(
            e.contains("sslcert") && e.contains("client certificates"),
            "{e}"
        );
        let e = split("host=h sslkey=/k.pem").err().unwrap_or_default();
        assert!(e.contains("sslkey"), "{e}");
    }

    #[test]
    fn modes_map_to_tokio_postgres() {
        use tokio_postgres::config::SslMode as T;
        assert_eq!(SslMode::Disable.negotiation(), T::Disable);
        assert_eq!(SslMode::Allow.negotiation(), T::Prefer);
        assert_eq!(SslMode::VerifyCa.negotiation(), T::Require);
        assert_eq!(SslMode::VerifyFull.negotiation(), T::Require);
    }

    #[test]
    fn missing_ca_file_is_an_error_at_build_time() {
        let s = Settings::resolve(Some("verify-full"), Some("/nonexistent/ca.pem"))
            .unwrap_or_else(|e| panic!("{e}"));
        let e = connector(&s).err().unwrap_or_default();
        assert!(e.contains("sslrootcert=/nonexistent/ca.pem"), "{e}");
    }
}
