//! A webhook receiver that checks Standard Webhooks signatures (and timestamps, against
//! replays) with [`Verifier`] and prints what it gets, or why it refused a request. It
//! stands alone (std's TCP and eventspool's `Verifier`): copy it into a project.
//!
//! ```sh
//! cargo run --example receiver                                  # prints a new secret
//! cargo run --example receiver -- 127.0.0.1:8080 whsec_<base64>  # or takes yours
//! ```
//! Then, in a second terminal, send it events with that secret:
//! `cargo run --example send -- --url http://127.0.0.1:8080/webhook --secret whsec_<base64>`.
//! Requests that do not verify are answered 401 (and so dead-lettered by the sender).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

use eventspool::{SigningSecret, Verifier};

/// The largest request body accepted (a sink posts at most what its batch holds).
const MAX_BODY: usize = 16 << 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
    let secret = match args.next() {
        Some(text) => SigningSecret::parse(&text)?,
        None => {
            let secret = SigningSecret::generate()?;
            println!("no secret given; this one is new: {}", secret.to_whsec());
            secret
        }
    };
    let listener = TcpListener::bind(&addr)?;
    println!("listening on http://{addr}/webhook, verifying signatures; Ctrl-C to stop");
    serve(listener, Verifier::new(secret), true);
    Ok(())
}

/// Answers every connection on a thread of its own: 204 to a request that verifies,
/// 401 to one that does not; with `print`, says which.
pub fn serve(listener: TcpListener, verifier: Verifier, print: bool) {
    for stream in listener.incoming().flatten() {
        let verifier = verifier.clone();
        std::thread::spawn(move || {
            if let Err(e) = answer(stream, &verifier, print) {
                eprintln!("connection ended: {e}");
            }
        });
    }
}

/// Reads requests from one keep-alive connection and answers each.
fn answer(stream: TcpStream, verifier: &Verifier, print: bool) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(()); // the client closed the connection
        }
        let mut headers = Vec::new();
        loop {
            let mut header = String::new();
            reader.read_line(&mut header)?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        let length = headers
            .iter()
            .find(|(name, _)| name == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        if length > MAX_BODY {
            out.write_all(b"HTTP/1.1 413 Too Large\r\nconnection: close\r\n\r\n")?;
            return Ok(());
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let id = headers
            .iter()
            .find(|(name, _)| name == "webhook-id")
            .map_or("-", |(_, v)| v.as_str());
        let status = match verifier.verify(headers.iter().map(|(k, v)| (k, v)), &body) {
            Ok(()) => {
                if print {
                    println!("{id}: {}", String::from_utf8_lossy(&body));
                }
                "204 No Content\r\n" // no body, nor a length, with a 204
            }
            Err(refused) => {
                if print {
                    println!("{id}: {refused} (answered 401)");
                }
                "401 Unauthorized\r\ncontent-length: 0\r\n"
            }
        };
        out.write_all(format!("HTTP/1.1 {status}\r\n").as_bytes())?;
    }
}
