//! A webhook receiver that verifies Standard Webhooks signatures and prints what it gets.
//!
//! ```sh
//! cargo run --example receiver -- 127.0.0.1:8080 whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
//! ```
//! Point a `WebhookSink` at `http://127.0.0.1:8080/webhook` with the same secret.
//! Requests whose signature does not verify are answered 401 (and so dead-lettered).

#[path = "support/receiver.rs"]
mod support;

use eventspool::SigningSecret;

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
    let secret = args.next().map(|s| SigningSecret::parse(&s)).transpose()?;
    let signed = secret.is_some();
    let receiver = support::Receiver::start(&addr, secret, true)?;
    println!(
        "listening on {} ({}); Ctrl-C to stop",
        receiver.url(),
        if signed {
            "verifying signatures"
        } else {
            "no secret: signatures not checked"
        }
    );
    std::thread::park();
    Ok(())
}
