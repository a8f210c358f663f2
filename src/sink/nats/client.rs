//! A small blocking NATS client, written by hand: the `nats` crate's blocking client is
//! deprecated and the maintained `async-nats` needs tokio. It speaks the documented
//! client protocol (INFO, CONNECT with headers, HPUB, SUB, MSG/HMSG, PING/PONG,
//! +OK/-ERR) over one TCP connection (TLS through rustls with the `tls` feature), and
//! does one thing: publish a batch to JetStream, pipelined, then collect the publish
//! acknowledgements. A failure leaves the connection unusable: the sink makes a new one
//! (that is its reconnect).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Where and how to connect, from a `nats://[user:password@|token@]host[:port]` URL
/// (`tls://` for TLS from the start).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Server {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// TLS asked for by the URL (the server may ask for it too).
    pub(crate) tls: bool,
    /// PEM certificates to trust instead of the web's roots.
    pub(crate) ca_file: Option<PathBuf>,
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "tls" } else { "nats" };
        write!(f, "{scheme}://{}:{}", self.host, self.port) // never the credentials
    }
}

impl Server {
    /// Reads a URL; says what is wrong with one that is not a NATS URL.
    pub(crate) fn parse(url: &str) -> Result<Server, String> {
        let (tls, rest) = match (url.strip_prefix("nats://"), url.strip_prefix("tls://")) {
            (Some(rest), _) => (false, rest),
            (None, Some(rest)) => (true, rest),
            (None, None) => return Err("the URL must start with nats:// or tls://".into()),
        };
        let (credentials, address) = match rest.rsplit_once('@') {
            Some((credentials, address)) => (Some(credentials), address),
            None => (None, rest),
        };
        let address = address.trim_end_matches('/');
        let (host, port) = match address.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse()
                    .map_err(|_| format!("the port {port:?} is not a number"))?,
            ),
            None => (address, 4222),
        };
        if host.is_empty() {
            return Err("the URL has no host".into());
        }
        let (mut user, mut password, mut token) = (None, None, None);
        match credentials.map(|c| c.split_once(':')) {
            Some(Some((u, p))) => (user, password) = (Some(u.to_owned()), Some(p.to_owned())),
            Some(None) => token = credentials.map(str::to_owned),
            None => {}
        }
        Ok(Server {
            host: host.to_owned(),
            port,
            tls,
            ca_file: None,
            user,
            password,
            token,
        })
    }
}

/// What the server says of itself first.
#[derive(Debug, Deserialize)]
struct Info {
    #[serde(default)]
    headers: bool,
    #[serde(default)]
    tls_required: bool,
    #[serde(default = "default_max_payload")]
    max_payload: usize,
}

fn default_max_payload() -> usize {
    1 << 20
}

/// A message to publish, fenced by the stream's sequence.
#[derive(Debug)]
pub(crate) struct Publish<'a> {
    pub(crate) subject: &'a str,
    /// The stream's last sequence this message must follow (`Nats-Expected-Last-Sequence`):
    /// JetStream refuses it otherwise, so nothing lands twice or out of order, whoever
    /// else published in between (a killed process's last writes, say).
    pub(crate) expect_last_seq: u64,
    pub(crate) payload: &'a [u8],
}

/// JetStream's answer to one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ack {
    /// Stored as the stream's message `stream_seq`; `duplicate` when the stream had it
    /// already (by a message id).
    Stored { stream_seq: u64, duplicate: bool },
    /// No stream listens on the subject (the server answered 503, no responders).
    NoResponders,
    /// The stream refused it.
    Refused {
        code: u16,
        err_code: u32,
        description: String,
    },
}

#[derive(Debug, Deserialize)]
struct AckBody {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    duplicate: bool,
    #[serde(default)]
    error: Option<AckError>,
}

/// JetStream's error object, in acknowledgements and API replies.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct AckError {
    #[serde(default)]
    pub(crate) code: u16,
    #[serde(default)]
    pub(crate) err_code: u32,
    #[serde(default)]
    pub(crate) description: String,
}

/// A message the server delivered to the inbox.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub(crate) subject: String,
    /// The first line of its headers (`NATS/1.0 503` for no responders), if it had any.
    pub(crate) status: Option<String>,
    pub(crate) payload: Vec<u8>,
}

impl Incoming {
    /// Whether it says nobody listens on the subject it answers.
    pub(crate) fn no_responders(&self) -> bool {
        self.status
            .as_deref()
            .is_some_and(|s| s.starts_with("NATS/1.0 503"))
    }
}

/// A connection to a NATS server, subscribed to an inbox of its own for the
/// acknowledgements.
pub(crate) struct Client {
    io: BufReader<Stream>,
    inbox: String,
    /// Requests sent, for their reply subjects.
    requests: u64,
    max_payload: usize,
    timeout: Duration,
}

const SID: &str = "1";

/// An inbox subject no other client picks: `_INBOX.` and 16 random hex digits.
fn inbox_name() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::getrandom(&mut bytes).is_err() {
        // No OS randomness: the time and the process are unique enough for an inbox.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = (nanos ^ u64::from(std::process::id()) << 32).to_le_bytes();
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("_INBOX.{hex}")
}

fn broken(what: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.into())
}

impl Client {
    /// Connects, says who it is, and subscribes to its inbox; every read and write
    /// waits at most `timeout`.
    pub(crate) fn connect(
        server: &Server,
        name: &str,
        timeout: Duration,
    ) -> std::io::Result<Client> {
        let address = (server.host.as_str(), server.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| broken(format!("{} resolves to no address", server.host)))?;
        let stream = TcpStream::connect_timeout(&address, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        // INFO comes in the clear; TLS, when either side wants it, starts after it.
        let mut plain = BufReader::new(stream);
        let line = read_line(&mut plain)?;
        let info = line
            .strip_prefix("INFO ")
            .ok_or_else(|| broken(format!("not a NATS server: it said {line:?}")))?;
        let info: Info = serde_json::from_str(info).map_err(|e| broken(format!("INFO: {e}")))?;
        if !info.headers {
            return Err(broken(
                "the server does not support headers (NATS 2.2 or newer needed)",
            ));
        }
        let stream = match server.tls || info.tls_required {
            true => tls::wrap(plain.into_inner(), server)?,
            false => Stream::Plain(plain.into_inner()),
        };
        let mut client = Client {
            io: BufReader::new(stream),
            inbox: inbox_name(),
            requests: 0,
            max_payload: default_max_payload(),
            timeout,
        };
        client.max_payload = info.max_payload;
        let connect = serde_json::json!({
            "verbose": false, "pedantic": false, "headers": true, "no_responders": true,
            "lang": "rust-eventspool", "version": env!("CARGO_PKG_VERSION"), "name": name,
            "user": server.user, "pass": server.password, "auth_token": server.token,
        });
        let hello = format!(
            "CONNECT {connect}\r\nPING\r\nSUB {}.* {SID}\r\n",
            client.inbox
        );
        client.send(hello.as_bytes())?;
        loop {
            match client.line()?.as_str() {
                "PONG" => return Ok(client),
                "PING" => client.pong()?,
                "+OK" => {}
                other if other.starts_with("INFO ") => {}
                other => {
                    return Err(broken(format!(
                        "the server refused the connection: {other}"
                    )));
                }
            }
        }
    }

    /// The largest payload the server takes.
    pub(crate) fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Publishes `messages`, `window` to a write, with at most `in_flight` windows
    /// whose acknowledgements are not all back: the server always has the next window
    /// while the client reads the acknowledgements of the one before. Returns the
    /// acknowledgements in order.
    pub(crate) fn publish_pipelined(
        &mut self,
        messages: &[Publish<'_>],
        window: usize,
        in_flight: usize,
    ) -> std::io::Result<Vec<Ack>> {
        let window = window.max(1);
        let mut acks: Vec<Option<Ack>> = vec![None; messages.len()];
        let (mut written, mut received) = (0, 0);
        let mut out = Vec::new();
        let mut deadline = Instant::now() + self.timeout;
        while received < messages.len() {
            // Write while fewer than `in_flight` windows wait for acknowledgements.
            while written < messages.len() {
                let end = (written + window).min(messages.len());
                if end - received > window * in_flight.max(1) {
                    break;
                }
                out.clear();
                for (i, m) in messages.iter().enumerate().take(end).skip(written) {
                    let headers = format!(
                        "NATS/1.0\r\nNats-Expected-Last-Sequence: {}\r\n\r\n",
                        m.expect_last_seq
                    );
                    let total = headers.len() + m.payload.len();
                    write!(
                        out,
                        "HPUB {} {}.{i} {} {total}\r\n{headers}",
                        m.subject,
                        self.inbox,
                        headers.len()
                    )?;
                    out.extend_from_slice(m.payload);
                    out.extend_from_slice(b"\r\n");
                }
                self.send(&out)?;
                written = end;
            }
            if Instant::now() >= deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "{} of {} publish acknowledgements did not come",
                        messages.len() - received,
                        messages.len()
                    ),
                ));
            }
            let Some(message) = self.message()? else {
                continue;
            };
            let index = message
                .subject
                .strip_prefix(&self.inbox)
                .and_then(|r| r.strip_prefix('.'))
                .and_then(reply_index);
            if let Some(slot) = index.and_then(|i| acks.get_mut(i))
                && slot.is_none()
            {
                *slot = Some(parse_ack(&message));
                received += 1;
                deadline = Instant::now() + self.timeout;
            }
        }
        Ok(acks.into_iter().flatten().collect())
    }

    /// Sends `body` to `subject` (a JetStream API request) and returns the reply.
    pub(crate) fn request(&mut self, subject: &str, body: &[u8]) -> std::io::Result<Incoming> {
        self.requests += 1;
        let reply = format!("{}.r{}", self.inbox, self.requests);
        let mut out = format!("PUB {subject} {reply} {}\r\n", body.len()).into_bytes();
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
        self.send(&out)?;
        let deadline = Instant::now() + self.timeout;
        loop {
            if Instant::now() >= deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no reply to {subject}"),
                ));
            }
            if let Some(message) = self.message()?
                && message.subject == reply
            {
                return Ok(message);
            }
        }
    }

    /// Reads the next protocol line (without its CRLF).
    fn line(&mut self) -> std::io::Result<String> {
        read_line(&mut self.io)
    }

    /// Writes `bytes` and flushes them out.
    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let stream = self.io.get_mut();
        stream.write_all(bytes)?;
        stream.flush()
    }

    fn pong(&mut self) -> std::io::Result<()> {
        self.send(b"PONG\r\n")
    }

    /// Reads what the server sends until a message; `None` for anything else (a PING
    /// answered, +OK, INFO).
    fn message(&mut self) -> std::io::Result<Option<Incoming>> {
        let line = self.line()?;
        let mut words = line.split(' ');
        match words.next() {
            Some("MSG") => {
                // MSG <subject> <sid> [reply-to] <#bytes>
                let parts: Vec<&str> = words.collect();
                let size = parts
                    .last()
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| broken(line.clone()))?;
                let payload = self.payload(size)?;
                Ok(Some(Incoming {
                    subject: parts[0].to_owned(),
                    status: None,
                    payload,
                }))
            }
            Some("HMSG") => {
                // HMSG <subject> <sid> [reply-to] <#header bytes> <#total bytes>
                let parts: Vec<&str> = words.collect();
                let n = parts.len();
                let (Some(header), Some(total)) = (
                    parts
                        .get(n.wrapping_sub(2))
                        .and_then(|h| h.parse::<usize>().ok()),
                    parts.last().and_then(|t| t.parse::<usize>().ok()),
                ) else {
                    return Err(broken(line.clone()));
                };
                if header > total {
                    return Err(broken(line.clone()));
                }
                let mut payload = self.payload(total)?;
                let headers = payload.drain(..header).collect::<Vec<u8>>();
                let headers = String::from_utf8_lossy(&headers);
                Ok(Some(Incoming {
                    subject: parts[0].to_owned(),
                    status: headers.lines().next().map(str::to_owned),
                    payload,
                }))
            }
            Some("PING") => self.pong().map(|()| None),
            Some("+OK" | "PONG" | "INFO") => Ok(None),
            Some("-ERR") => Err(broken(format!("the server said {line}"))),
            _ => Err(broken(format!("unexpected from the server: {line:?}"))),
        }
    }

    /// Reads `size` bytes and the CRLF after them.
    fn payload(&mut self, size: usize) -> std::io::Result<Vec<u8>> {
        let mut payload = vec![0; size + 2];
        self.io.read_exact(&mut payload)?;
        payload.truncate(size);
        Ok(payload)
    }
}

/// The publish a reply token names: exactly as written (`7`, never `07` or `+7`, which
/// `parse` would take for the same), so only the reply to that publish counts.
fn reply_index(token: &str) -> Option<usize> {
    let canonical = token.bytes().all(|b| b.is_ascii_digit())
        && !token.is_empty()
        && (token == "0" || !token.starts_with('0'));
    canonical.then(|| token.parse().ok()).flatten()
}

/// Reads a protocol line (without its CRLF) from `input`.
fn read_line(input: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    if input.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        ));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// The connection: plain TCP, or TLS over it.
enum Stream {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.flush(),
        }
    }
}

#[cfg(feature = "tls")]
mod tls {
    use std::net::TcpStream;
    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};

    use super::{Server, Stream, broken};

    /// TLS over `tcp` to `server`, trusting its CA file or else the web's roots.
    pub(super) fn wrap(tcp: TcpStream, server: &Server) -> std::io::Result<Stream> {
        let mut roots = rustls::RootCertStore::empty();
        match &server.ca_file {
            Some(file) => {
                let certs = CertificateDer::pem_file_iter(file)
                    .map_err(|e| broken(format!("cannot read {}: {e}", file.display())))?;
                for cert in certs {
                    let cert = cert.map_err(|e| broken(format!("{}: {e}", file.display())))?;
                    roots
                        .add(cert)
                        .map_err(|e| broken(format!("{}: {e}", file.display())))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| broken(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(server.host.clone())
            .map_err(|e| broken(format!("{}: {e}", server.host)))?;
        let connection = rustls::ClientConnection::new(Arc::new(config), name)
            .map_err(|e| broken(e.to_string()))?;
        Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(
            connection, tcp,
        ))))
    }
}

#[cfg(not(feature = "tls"))]
mod tls {
    use std::net::TcpStream;

    use super::{Server, Stream, broken};

    pub(super) fn wrap(_: TcpStream, _: &Server) -> std::io::Result<Stream> {
        Err(broken(
            "TLS needs the `tls` feature, which this build leaves out",
        ))
    }
}

/// What a publish acknowledgement says: no responders (the 503 status), or
/// JetStream's JSON.
fn parse_ack(message: &Incoming) -> Ack {
    if message.no_responders() {
        return Ack::NoResponders;
    }
    match serde_json::from_slice::<AckBody>(&message.payload) {
        Ok(AckBody { error: Some(e), .. }) => Ack::Refused {
            code: e.code,
            err_code: e.err_code,
            description: e.description,
        },
        Ok(AckBody { seq, duplicate, .. }) => Ack::Stored {
            stream_seq: seq,
            duplicate,
        },
        Err(e) => Ack::Refused {
            code: 0,
            err_code: 0,
            description: format!(
                "not a JetStream acknowledgement ({e}): {}",
                String::from_utf8_lossy(&message.payload)
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_acknowledgements_are_read() {
        let s = Server::parse("nats://me:secret@example.test:4333").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("example.test", 4333));
        assert_eq!(
            format!("{s:?}"),
            "nats://example.test:4333",
            "no credentials shown"
        );
        assert_eq!(
            Server::parse("nats://tok@h").unwrap().token.as_deref(),
            Some("tok")
        );
        assert!(Server::parse("http://h").is_err());
        assert!(Server::parse("nats://h:port").is_err());
        assert!(Server::parse("nats://").is_err());
        assert_eq!(reply_index("0"), Some(0));
        assert_eq!(reply_index("17"), Some(17));
        for other in ["00", "017", "+1", "", "r1", "1 "] {
            assert_eq!(reply_index(other), None, "{other:?}");
        }
        let reply = |status: Option<&str>, payload: &[u8]| Incoming {
            subject: "_INBOX.x.0".into(),
            status: status.map(str::to_owned),
            payload: payload.to_vec(),
        };
        assert_eq!(
            parse_ack(&reply(None, br#"{"stream":"E","seq":3,"duplicate":true}"#)),
            Ack::Stored {
                stream_seq: 3,
                duplicate: true
            }
        );
        assert_eq!(
            parse_ack(&reply(Some("NATS/1.0 503"), b"")),
            Ack::NoResponders
        );
        assert!(matches!(
            parse_ack(&reply(
                None,
                br#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 7"}}"#
            )),
            Ack::Refused {
                code: 400,
                err_code: 10071,
                ..
            }
        ));
    }
}
