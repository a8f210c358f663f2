//! A small webhook receiver shared by the examples, on the tests' HTTP/1.1 server (a
//! thread per connection): it checks Standard Webhooks signatures when given the
//! secret, and logs the seq range of every request it accepts (from the
//! `eventspool-seq` header).
#![allow(dead_code)] // each example uses a different part

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use eventspool::{SigningSecret, Verifier};

#[path = "../../tests/common/http.rs"]
mod http;

use http::{Reply, Request, Server};

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
    server: Server,
}

impl Receiver {
    /// Listens on `addr`; with `print`, prints each request's body.
    pub fn start(
        addr: &str,
        secret: Option<SigningSecret>,
        print: bool,
    ) -> Result<Receiver, Box<dyn std::error::Error + Send + Sync>> {
        Receiver::start_with_log(addr, secret, print, Arc::default())
    }

    /// Like `start`, appending to an existing log (to come back after `stop`).
    pub fn start_with_log(
        addr: &str,
        secret: Option<SigningSecret>,
        print: bool,
        log: Arc<Mutex<Log>>,
    ) -> Result<Receiver, Box<dyn std::error::Error + Send + Sync>> {
        let kept = log.clone();
        let server = Server::bind(addr, false, move |request| {
            answer(request, secret.as_ref(), &kept, print)
        })?;
        Ok(Receiver {
            addr: server.addr(),
            log,
            server,
        })
    }

    /// Like `start` without a secret, answering each request after `delay` (a receiver
    /// as far away as an ordinary webhook endpoint).
    pub fn start_slow(
        addr: &str,
        delay: std::time::Duration,
    ) -> Result<Receiver, Box<dyn std::error::Error + Send + Sync>> {
        let log: Arc<Mutex<Log>> = Arc::default();
        let kept = log.clone();
        let server = Server::bind(addr, false, move |request| {
            match answer(request, None, &kept, false) {
                Reply::Status(204, _) => Reply::Delayed(delay, 204),
                other => other,
            }
        })?;
        Ok(Receiver {
            addr: server.addr(),
            log,
            server,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}/webhook", self.addr)
    }

    /// Events accepted so far (sum of the seq ranges).
    pub fn events(&self) -> u64 {
        self.log.lock().unwrap().events
    }

    /// Stops listening and shuts the open connections: new connections are refused.
    pub fn stop(self) {
        drop(self.server);
    }
}

fn answer(
    request: &Request,
    secret: Option<&SigningSecret>,
    log: &Mutex<Log>,
    print: bool,
) -> Reply {
    let header = |name: &str| request.header(name).unwrap_or_default();
    let id = header("webhook-id");
    // The signature, and a timestamp within five minutes of this clock (no replays).
    if let Some(secret) = secret
        && let Err(refused) = Verifier::new(secret.clone()).verify(&request.headers, &request.body)
    {
        log.lock().unwrap().bad_signatures += 1;
        if print {
            println!("{id}: {refused} (answered 401)");
        }
        return Reply::status(401);
    }
    let Some((first, last)) = header("eventspool-seq")
        .split_once('-')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
    else {
        return Reply::status(400);
    };
    if print {
        println!(
            "{id} seq {first}-{last}: {}",
            String::from_utf8_lossy(&request.body)
        );
    }
    let mut log = log.lock().unwrap();
    log.events += last + 1 - first;
    log.deliveries.push(Delivery {
        first,
        last,
        at: Instant::now(),
    });
    Reply::status(204)
}
