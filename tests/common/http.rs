//! A real HTTP/1.1 receiver for the delivery tests and the examples, whose answers are
//! scripted: any status and headers, never answering, or resetting the connection.
//! Each connection has its own thread. It can be taken down (connections refused) and
//! brought back on the same port.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// The scripted answer it was given.
    pub reply: Reply,
    /// When it arrived.
    pub at: Instant,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// How the receiver answers a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Status(u16, Vec<(String, String)>),
    /// Read the request and never answer (until the server is dropped).
    Hang,
    /// Read the request and reset the connection (RST).
    Reset,
    /// Answer this status after this long (a receiver that takes time).
    Delayed(Duration, u16),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Status(200, Vec::new())
    }
    pub fn status(code: u16) -> Reply {
        Reply::Status(code, Vec::new())
    }
    pub fn with_header(code: u16, name: &str, value: &str) -> Reply {
        Reply::Status(code, vec![(name.into(), value.into())])
    }
}

type Script = Box<dyn FnMut(&Request) -> Reply + Send>;

struct State {
    requests: Mutex<Vec<Request>>,
    /// Whether `requests` keeps what arrives (a load test only counts).
    keep: AtomicBool,
    arrived: Condvar,
    script: Mutex<Script>,
    up: AtomicBool,
    closing: AtomicBool,
    /// Open connections by number, to shut them when going down.
    conns: Mutex<HashMap<u64, TcpStream>>,
    opened: AtomicU64,
    /// Requests being answered now, and the most there were at once.
    active: AtomicU64,
    /// Past this many at once, answer 429 (a receiver that sheds load).
    capacity: AtomicU64,
    most_active: AtomicU64,
}

pub struct Server {
    addr: SocketAddr,
    state: Arc<State>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl Server {
    /// A receiver answering 200 to everything.
    pub fn start() -> Server {
        Server::with_script(|_| Reply::ok())
    }

    pub fn with_script(script: impl FnMut(&Request) -> Reply + Send + 'static) -> Server {
        Server::bind("127.0.0.1:0", true, script).expect("bind")
    }

    /// A receiver on `addr` answering what `script` says; with `keep`, requests are kept
    /// for `requests()`.
    pub fn bind(
        addr: impl ToSocketAddrs,
        keep: bool,
        script: impl FnMut(&Request) -> Reply + Send + 'static,
    ) -> std::io::Result<Server> {
        let state = Arc::new(State {
            requests: Mutex::new(Vec::new()),
            keep: AtomicBool::new(keep),
            arrived: Condvar::new(),
            script: Mutex::new(Box::new(script)),
            up: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            opened: AtomicU64::new(0),
            active: AtomicU64::new(0),
            capacity: AtomicU64::new(u64::MAX),
            most_active: AtomicU64::new(0),
        });
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let mut server = Server {
            addr,
            state,
            acceptor: None,
        };
        server.serve(listener);
        Ok(server)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn set_script(&self, script: impl FnMut(&Request) -> Reply + Send + 'static) {
        *self.state.script.lock().unwrap() = Box::new(script);
    }

    /// Whether requests are kept for `requests()` (the default); the script sees them
    /// either way.
    pub fn keep_requests(&self, keep: bool) {
        self.state.keep.store(keep, Ordering::SeqCst);
    }

    /// Answers 429 to a request that arrives while `n` are being answered.
    pub fn set_capacity(&self, n: u64) {
        self.state.capacity.store(n, Ordering::SeqCst);
    }

    /// The most requests it was answering at once (from reading one to answering it).
    pub fn most_at_once(&self) -> u64 {
        self.state.most_active.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The requests after the first `seen` (for waiting on many without copying them
    /// all at every look).
    pub fn requests_after(&self, seen: usize) -> Vec<Request> {
        let requests = self.state.requests.lock().unwrap();
        requests.get(seen..).unwrap_or_default().to_vec()
    }

    /// Waits until at least `n` requests arrived (or fails after `timeout`).
    pub fn wait_requests(&self, n: usize, timeout: Duration) -> Vec<Request> {
        let deadline = Instant::now() + timeout;
        let mut requests = self.state.requests.lock().unwrap();
        while requests.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {n} requests, got {}",
                requests.len()
            );
            requests = self.state.arrived.wait_timeout(requests, left).unwrap().0;
        }
        requests.clone()
    }

    /// Takes the receiver down: the listener closes (connections are refused) and
    /// every open connection is shut.
    pub fn down(&mut self) {
        self.state.up.store(false, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wake the acceptor
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.join().unwrap();
        }
        for (_, conn) in self.state.conns.lock().unwrap().drain() {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Brings the receiver back on the same port.
    pub fn up(&mut self) {
        let listener = TcpListener::bind(self.addr).expect("rebind the same port");
        self.serve(listener);
    }

    fn serve(&mut self, listener: TcpListener) {
        self.state.up.store(true, Ordering::SeqCst);
        let state = self.state.clone();
        self.acceptor = Some(thread::spawn(move || {
            for stream in listener.incoming() {
                if !state.up.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let n = state.opened.fetch_add(1, Ordering::SeqCst);
                if let Ok(clone) = stream.try_clone() {
                    state.conns.lock().unwrap().insert(n, clone);
                }
                let state = state.clone();
                thread::spawn(move || {
                    handle(stream, &state);
                    state.conns.lock().unwrap().remove(&n);
                });
            }
        }));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.state.closing.store(true, Ordering::SeqCst);
        self.down();
    }
}

fn handle(stream: TcpStream, state: &State) {
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(clone);
    let mut out = stream;
    loop {
        let Some(request) = read_request(&mut reader) else {
            return;
        };
        let active = state.active.fetch_add(1, Ordering::SeqCst) + 1;
        state.most_active.fetch_max(active, Ordering::SeqCst);
        let answered = Answered(&state.active);
        let reply = if active > state.capacity.load(Ordering::SeqCst) {
            Reply::status(429)
        } else {
            (state.script.lock().unwrap())(&request)
        };
        if state.keep.load(Ordering::SeqCst) {
            state.requests.lock().unwrap().push(Request {
                reply: reply.clone(),
                ..request
            });
            state.arrived.notify_all();
        }
        let reply = match reply {
            Reply::Delayed(wait, code) => {
                thread::sleep(wait); // the receiver's own latency, not a wait on the client
                Reply::Status(code, Vec::new())
            }
            other => other,
        };
        match reply {
            Reply::Status(code, headers) => {
                // No body (nor length) where HTTP allows none.
                let body = if code == 204 || code == 304 { "" } else { "ok" };
                let mut head = format!("HTTP/1.1 {code} X\r\n");
                if !body.is_empty() {
                    head.push_str("content-length: 2\r\n");
                }
                for (k, v) in headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                head.push_str(body);
                // Counted as answered before the client can see the answer (and send
                // its next request).
                drop(answered);
                if out.write_all(head.as_bytes()).is_err() {
                    return;
                }
            }
            Reply::Delayed(..) => unreachable!("answered above"),
            Reply::Hang => {
                // Until the server goes down or the client hangs up: a long run piles up
                // hung connections otherwise, each with a thread.
                let _ = out.set_read_timeout(Some(Duration::from_millis(20)));
                let mut byte = [0u8; 1];
                while !state.closing.load(Ordering::SeqCst) && state.up.load(Ordering::SeqCst) {
                    match reader.read(&mut byte) {
                        Ok(0) => return, // the client closed the connection
                        Ok(_) => {}      // more bytes: not answered either
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(_) => return,
                    }
                }
                return;
            }
            Reply::Reset => {
                let _ = socket2::SockRef::from(&out).set_linger(Some(Duration::ZERO));
                return; // dropping with a zero linger sends RST
            }
        }
    }
}

/// Counts a request as answered when dropped.
struct Answered<'a>(&'a AtomicU64);

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        path,
        headers,
        body,
        reply: Reply::ok(),
        at: Instant::now(),
    })
}
