//! A small webhook receiver (tiny_http) shared by the examples: it checks Standard
//! Webhooks signatures when given the secret, and logs the seq range of every request
//! it accepts (from the `eventspool-seq` header).
#![allow(dead_code)] // each example uses a different part

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use eventspool::{SigningSecret, verify};

/// One accepted request.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub first: u64,
    pub last: u64,
    pub at: Instant,
}

#[derive(Debug, Default)]
pub struct Log {
    pub deliveries: Vec<Delivery>,
    /// Events accepted (sum of the seq ranges).
    pub events: u64,
    /// Requests refused because their signature did not verify.
    pub bad_signatures: u64,
}

pub struct Receiver {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Log>>,
    server: Arc<tiny_http::Server>,
    threads: Vec<JoinHandle<()>>,
}

impl Receiver {
    /// Listens on `addr` with `threads` handler threads; with `print`, prints each event.
    pub fn start(
        addr: &str,
        secret: Option<SigningSecret>,
        threads: usize,
        print: bool,
    ) -> Result<Receiver, Box<dyn std::error::Error + Send + Sync>> {
        Receiver::start_with_log(addr, secret, threads, print, Arc::default())
    }

    /// Like `start`, appending to an existing log (to come back after `stop`).
    pub fn start_with_log(
        addr: &str,
        secret: Option<SigningSecret>,
        threads: usize,
        print: bool,
        log: Arc<Mutex<Log>>,
    ) -> Result<Receiver, Box<dyn std::error::Error + Send + Sync>> {
        let server = Arc::new(tiny_http::Server::http(addr)?);
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or("the receiver is not on an IP address")?;
        let secret = Arc::new(secret);
        let threads = (0..threads)
            .map(|_| {
                let (server, log, secret) = (server.clone(), log.clone(), secret.clone());
                std::thread::spawn(move || {
                    while let Ok(request) = server.recv() {
                        handle(request, secret.as_ref().as_ref(), &log, print);
                    }
                })
            })
            .collect();
        Ok(Receiver {
            addr,
            log,
            server,
            threads,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}/webhook", self.addr)
    }

    /// Events accepted so far (sum of the seq ranges).
    pub fn events(&self) -> u64 {
        self.log.lock().unwrap().events
    }

    /// Stops listening: new connections are refused.
    pub fn stop(self) {
        for _ in &self.threads {
            self.server.unblock();
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn handle(
    mut request: tiny_http::Request,
    secret: Option<&SigningSecret>,
    log: &Mutex<Log>,
    print: bool,
) {
    let header = |name: &str| {
        request
            .headers()
            .iter()
            .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str().to_owned())
    };
    let (id, timestamp, signature, range) = (
        header("webhook-id").unwrap_or_default(),
        header("webhook-timestamp").unwrap_or_default(),
        header("webhook-signature").unwrap_or_default(),
        header("eventspool-seq").unwrap_or_default(),
    );
    let mut body = Vec::new();
    if request.as_reader().read_to_end(&mut body).is_err() {
        let _ = request.respond(tiny_http::Response::empty(400));
        return;
    }
    if let Some(secret) = secret
        && !verify(secret, &id, &timestamp, &body, &signature)
    {
        log.lock().unwrap().bad_signatures += 1;
        let _ = request.respond(tiny_http::Response::empty(401));
        return;
    }
    let Some((first, last)) = range
        .split_once('-')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
    else {
        let _ = request.respond(tiny_http::Response::empty(400));
        return;
    };
    if print {
        println!(
            "{id} seq {first}-{last}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let mut log = log.lock().unwrap();
    log.events += last + 1 - first;
    log.deliveries.push(Delivery {
        first,
        last,
        at: Instant::now(),
    });
    drop(log);
    let _ = request.respond(tiny_http::Response::empty(204));
}
