//! Real brokers for the broker sinks' tests, started by the tests on 127.0.0.1 and
//! stopped with them: `redis-server` and `nats-server -js`, each with its data in a
//! folder of its own so a restart finds it again.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::wait_until;

/// A free TCP port on 127.0.0.1 (the OS's choice; free again once this returns).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The program's path, or a failure that says what to install.
fn program(name: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    if let Ok(found) = which(name) {
        return found;
    }
    panic!(
        "{name} is not installed: the broker tests need it (apt-get install -y {package}; \
         .ci/run installs it)"
    );
}

fn which(name: &str) -> Result<PathBuf, ()> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map_err(|_| ())?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match path.is_empty() {
        true => Err(()),
        false => Ok(PathBuf::from(path)),
    }
}

/// A broker process: started, stopped (SIGTERM, waiting for it to end) and started
/// again on the same port and data folder.
#[derive(Debug)]
pub struct Broker {
    pub port: u16,
    pub dir: PathBuf,
    program: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Broker {
    fn new(program: PathBuf, port: u16, dir: &Path, args: Vec<String>) -> Broker {
        let mut broker = Broker {
            port,
            dir: dir.to_owned(),
            program,
            args,
            child: None,
        };
        broker.start();
        broker
    }

    /// `redis-server` on a free port, appending every write to its log (fsync always)
    /// in `dir`.
    pub fn redis(dir: &Path) -> Broker {
        let port = free_port();
        let args = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir.display().to_string(),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--daemonize",
            "no",
        ];
        Broker::new(
            program("redis-server", "redis-server"),
            port,
            dir,
            args.iter().map(|a| a.to_string()).collect(),
        )
    }

    /// `nats-server` with JetStream, its store in `dir`.
    pub fn nats(dir: &Path) -> Broker {
        let port = free_port();
        let args = [
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-js",
            "-sd",
            &dir.display().to_string(),
        ];
        Broker::new(
            program("nats-server", "nats-server"),
            port,
            dir,
            args.iter().map(|a| a.to_string()).collect(),
        )
    }

    /// `nats-server` with JetStream that requires TLS, with the certificate and key
    /// [`tls_files`] made.
    pub fn nats_tls(dir: &Path, files: &TlsFiles) -> Broker {
        let mut broker = Broker::nats(dir);
        broker.stop();
        for (flag, file) in [("--tlscert", &files.cert), ("--tlskey", &files.key)] {
            broker.args.push(flag.into());
            broker.args.push(file.display().to_string());
        }
        broker.args.push("--tls".into());
        broker.start();
        broker
    }

    /// Starts the process and waits until it takes connections.
    pub fn start(&mut self) {
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the broker");
        self.child = Some(child);
        let port = self.port;
        wait_until(
            Duration::from_secs(20),
            "the broker takes connections",
            || TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
    }

    /// Stops the process with SIGTERM and waits for it to end.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// The same broker restarted with `extra` arguments (a password, say).
    pub fn with_args(mut self, extra: &[&str]) -> Broker {
        self.stop();
        self.args.extend(extra.iter().map(|a| a.to_string()));
        self.start();
        self
    }

    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A CA and a server certificate it signed, for `localhost` and 127.0.0.1.
#[derive(Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a CA and a server certificate with the system's `openssl`.
pub fn tls_files(dir: &Path) -> TlsFiles {
    let path = |name: &str| dir.join(name);
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl is installed");
        assert!(status.success(), "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        path("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("ext file");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ]);
    TlsFiles {
        ca: path("ca.pem"),
        cert: path("server.pem"),
        key: path("server.key"),
    }
}
