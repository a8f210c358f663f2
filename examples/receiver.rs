//! A webhook receiver that verifies Standard Webhooks signatures (and the timestamp,
//! against replays) and prints what it gets, or why it refused a request.
//!
//! ```sh
//! cargo run --example receiver                                  # prints a new secret
//! cargo run --example receiver -- 127.0.0.1:8080 whsec_<base64>  # or takes yours
//! ```
//! Then, in a second terminal, send it events with the secret it printed:
//! `cargo run --example send -- --url http://127.0.0.1:8080/webhook --secret whsec_<base64>`.
//! Requests that do not verify are answered 401 (and so dead-lettered by the sender).

#[path = "support/receiver.rs"]
mod support;

use eventspool::SigningSecret;

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
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
    let receiver = support::Receiver::start(&addr, Some(secret), true)?;
    println!(
        "listening on {}, verifying signatures; Ctrl-C to stop",
        receiver.url()
    );
    std::thread::park();
    Ok(())
}
