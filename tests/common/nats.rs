//! A few lines of the NATS protocol for the tests, apart from the library's client: to
//! create JetStream streams and read back what was stored, as an independent reader.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

/// What the connection runs over: TCP, or TLS over it.
pub trait Wire: Read + Write {}
impl<T: Read + Write> Wire for T {}

/// A connection that sends requests and reads their replies.
pub struct Nats {
    io: BufReader<Box<dyn Wire>>,
    next: u64,
}

/// A message as JetStream stored it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub stream_seq: u64,
    pub subject: String,
    /// The event the payload holds.
    pub event: Value,
}

impl Nats {
    pub fn connect(port: u16) -> std::io::Result<Nats> {
        Nats::start(port, None, "")
    }

    /// As `user` with `password`.
    pub fn connect_as(port: u16, user: &str, password: &str) -> std::io::Result<Nats> {
        let credentials = json!({"user": user, "pass": password}).to_string();
        Nats::start(
            port,
            None,
            &format!(",{}", &credentials[1..credentials.len() - 1]),
        )
    }

    /// Over TLS, trusting the certificates in the PEM file `ca`.
    pub fn connect_tls(port: u16, ca: &std::path::Path) -> std::io::Result<Nats> {
        Nats::start(port, Some(ca), "")
    }

    /// Connects; `credentials` are more fields of CONNECT (`,"user":..`), or empty.
    fn start(port: u16, ca: Option<&std::path::Path>, credentials: &str) -> std::io::Result<Nats> {
        let tcp = TcpStream::connect(("127.0.0.1", port))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        tcp.set_nodelay(true)?;
        let mut plain = BufReader::new(tcp);
        let mut info = String::new();
        plain.read_line(&mut info)?; // INFO, in the clear
        let tcp = plain.into_inner();
        let wire: Box<dyn Wire> = match ca {
            None => Box::new(tcp),
            Some(ca) => Box::new(tls(tcp, ca)),
        };
        let mut nats = Nats {
            io: BufReader::new(wire),
            next: 0,
        };
        let hello = format!(
            "CONNECT {{\"verbose\":false,\"headers\":true,\"no_responders\":true{credentials}}}\r\n\
             SUB _TEST.reply.* 1\r\nPING\r\n"
        );
        nats.io.get_mut().write_all(hello.as_bytes())?;
        while nats.line()? != "PONG" {}
        Ok(nats)
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        self.io.read_line(&mut line)?;
        Ok(line.trim_end().to_owned())
    }

    /// Sends `payload` to `subject` and returns the reply's payload.
    pub fn request(&mut self, subject: &str, payload: &Value) -> std::io::Result<Value> {
        self.next += 1;
        let reply = format!("_TEST.reply.{}", self.next);
        let body = payload.to_string();
        let request = format!("PUB {subject} {reply} {}\r\n{body}\r\n", body.len());
        self.await_reply(request.as_bytes(), &reply)
    }

    /// Publishes `payload` to JetStream on `subject`, with `Nats-Expected-Last-Sequence`
    /// when `expect_last_seq` is given (as the sink does), and returns the acknowledgement.
    pub fn publish(
        &mut self,
        subject: &str,
        payload: &[u8],
        expect_last_seq: Option<u64>,
    ) -> std::io::Result<Value> {
        self.next += 1;
        let reply = format!("_TEST.reply.{}", self.next);
        let headers = match expect_last_seq {
            Some(seq) => format!("NATS/1.0\r\nNats-Expected-Last-Sequence: {seq}\r\n\r\n"),
            None => "NATS/1.0\r\n\r\n".to_owned(),
        };
        let mut request = format!(
            "HPUB {subject} {reply} {} {}\r\n{headers}",
            headers.len(),
            headers.len() + payload.len()
        )
        .into_bytes();
        request.extend_from_slice(payload);
        request.extend_from_slice(b"\r\n");
        self.await_reply(&request, &reply)
    }

    /// Writes `request` and reads until the message to `reply`: its JSON payload.
    fn await_reply(&mut self, request: &[u8], reply: &str) -> std::io::Result<Value> {
        self.io.get_mut().write_all(request)?;
        self.io.get_mut().flush()?;
        loop {
            let line = self.line()?;
            let words: Vec<&str> = line.split(' ').collect();
            match words[0] {
                "PING" => self.io.get_mut().write_all(b"PONG\r\n")?,
                "MSG" | "HMSG" => {
                    let size: usize = words.last().and_then(|n| n.parse().ok()).unwrap_or(0);
                    let mut data = vec![0; size + 2];
                    self.io.read_exact(&mut data)?;
                    data.truncate(size);
                    if words[1] == reply {
                        let header = if words[0] == "HMSG" {
                            words[words.len() - 2].parse().unwrap_or(0)
                        } else {
                            0
                        };
                        return Ok(serde_json::from_slice(&data[header..]).unwrap_or(Value::Null));
                    }
                }
                _ => {}
            }
        }
    }

    /// Publishes `payloads` to `subject`, `window` to a write, and reads their
    /// JetStream acknowledgements, with at most `in_flight` windows unacknowledged:
    /// the pipelined publishing a raw client does, as a baseline. With `ids`, each
    /// message carries its `Nats-Msg-Id`.
    pub fn publish_windows(
        &mut self,
        subject: &str,
        payloads: &[Vec<u8>],
        ids: Option<&[String]>,
        window: usize,
        in_flight: usize,
    ) -> std::io::Result<()> {
        let (mut written, mut acked) = (0, 0);
        while acked < payloads.len() {
            while written < payloads.len() && written + window <= acked + window * in_flight {
                let end = (written + window).min(payloads.len());
                let mut out = Vec::new();
                for i in written..end {
                    let line = match ids {
                        Some(ids) => {
                            let headers = format!("NATS/1.0\r\nNats-Msg-Id: {}\r\n\r\n", ids[i]);
                            let total = headers.len() + payloads[i].len();
                            format!(
                                "HPUB {subject} _TEST.reply.p{i} {} {total}\r\n{headers}",
                                headers.len()
                            )
                        }
                        None => format!("PUB {subject} _TEST.reply.p{i} {}\r\n", payloads[i].len()),
                    };
                    out.extend_from_slice(line.as_bytes());
                    out.extend_from_slice(&payloads[i]);
                    out.extend_from_slice(b"\r\n");
                }
                self.io.get_mut().write_all(&out)?;
                self.io.get_mut().flush()?;
                written = end;
            }
            let line = self.line()?;
            let words: Vec<&str> = line.split(' ').collect();
            match words[0] {
                "PING" => self.io.get_mut().write_all(b"PONG\r\n")?,
                "MSG" | "HMSG" => {
                    let size: usize = words.last().and_then(|n| n.parse().ok()).unwrap_or(0);
                    let mut data = vec![0; size + 2];
                    self.io.read_exact(&mut data)?;
                    if words[1].starts_with("_TEST.reply.p") {
                        acked += 1;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Creates a file-backed stream `name` on `subjects`.
    pub fn create_stream(&mut self, name: &str, subjects: &[&str]) -> std::io::Result<Value> {
        let config = json!({"name": name, "subjects": subjects, "storage": "file",
                            "duplicate_window": 120_000_000_000u64});
        self.request(&format!("$JS.API.STREAM.CREATE.{name}"), &config)
    }

    /// How many messages stream `name` holds.
    pub fn count(&mut self, name: &str) -> u64 {
        self.request(&format!("$JS.API.STREAM.INFO.{name}"), &json!({}))
            .ok()
            .and_then(|info| info["state"]["messages"].as_u64())
            .unwrap_or(0)
    }

    /// Every message of stream `name`, in stream order.
    pub fn messages(&mut self, name: &str) -> std::io::Result<Vec<Stored>> {
        let info = self.request(&format!("$JS.API.STREAM.INFO.{name}"), &json!({}))?;
        let last = info["state"]["last_seq"].as_u64().unwrap_or(0);
        let mut out = Vec::new();
        for seq in 1..=last {
            let got = self.request(
                &format!("$JS.API.STREAM.MSG.GET.{name}"),
                &json!({"seq": seq}),
            )?;
            let message = &got["message"];
            let data = base64::engine::general_purpose::STANDARD
                .decode(message["data"].as_str().unwrap_or_default())
                .unwrap_or_default();
            out.push(Stored {
                stream_seq: seq,
                subject: message["subject"].as_str().unwrap_or_default().to_owned(),
                event: serde_json::from_slice(&data).unwrap_or(Value::Null),
            });
        }
        Ok(out)
    }
}

/// A TLS client over `tcp` trusting the certificates in `ca`.
fn tls(
    tcp: TcpStream,
    ca: &std::path::Path,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("a certificate")).expect("a root");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").expect("name");
    let connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("TLS");
    rustls::StreamOwned::new(connection, tcp)
}
