//! A private PostgreSQL cluster for tests: `initdb` in a temporary folder, the server on a free
//! loopback port, trust authentication for the `postgres` superuser.
//!
//! Debian's `postgresql` package (`make postgres`) provides the binaries, under
//! `/usr/lib/postgresql/<version>/bin` (or the folder in `TOLLGATE_PG_BIN`). PostgreSQL refuses to
//! run as root: when the tests run as root, the cluster runs as the `postgres` user the package
//! creates (through `runuser`), in a folder handed to it.
//!
//! The cluster is removed when its [`Cluster`] is dropped, and also when the test process ends
//! any other way (statics are never dropped, and a killed process drops nothing): a small
//! watcher shell, started with the cluster, reads its standard input from a pipe only this
//! process holds; when the pipe closes, the watcher stops the server and removes the folder.
//! [`Cluster::shared`] starts one cluster per test binary, which tests share, each in a
//! database of its own ([`Cluster::create_database`]).

use std::io::{self, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// The user the cluster runs as when the tests run as root.
const SERVICE_USER: &str = "postgres";

/// The folder with `initdb`, `pg_ctl`, `postgres` and `psql`: `TOLLGATE_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin` that has `initdb`.
pub fn bin_dir() -> io::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("TOLLGATE_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| {
            io::Error::new(e.kind(), format!("PostgreSQL is not installed (run `make postgres`): {e}"))
        })?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, "no PostgreSQL initdb found (run `make postgres`)")
    })
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn check(what: &str, out: std::process::Output) -> io::Result<()> {
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )))
}

/// A running private cluster.
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_root: bool,
    /// Closing it makes the watcher stop the server and remove the folder.
    watcher_stdin: Mutex<Option<ChildStdin>>,
    watcher: Mutex<Option<Child>>,
    databases: AtomicU64,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("dir", &self.dir).field("port", &self.port).finish()
    }
}

impl Cluster {
    /// The cluster this test process shares, started on first use; panics (failing the test)
    /// when it cannot start.
    #[allow(clippy::panic)]
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(|| Cluster::start().unwrap_or_else(|e| panic!("starting PostgreSQL: {e}")))
    }

    /// Creates and starts a new cluster.
    pub fn start() -> io::Result<Cluster> {
        let bin = bin_dir()?;
        let as_root = running_as_root();
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("tollgate-pg-{}-{nanos:x}", std::process::id()));
        std::fs::create_dir(&dir)?;
        if as_root {
            check("chown", Command::new("chown").arg(format!("{SERVICE_USER}:")).arg(&dir).output()?)?;
        }
        // The watcher first, so the folder goes away even if initdb or the start fails.
        let pg_ctl = bin.join("pg_ctl");
        let script = "read _; \"$1\" -D \"$2/data\" -m immediate stop >/dev/null 2>&1; rm -rf \"$2\"";
        let mut watcher = Self::command_as(as_root, "sh")
            .arg("-c")
            .arg(script)
            .arg("watcher")
            .arg(&pg_ctl)
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let stdin = watcher.stdin.take();
        let mut cluster = Cluster {
            bin,
            dir,
            port: 0,
            as_root,
            watcher_stdin: Mutex::new(stdin),
            watcher: Mutex::new(Some(watcher)),
            databases: AtomicU64::new(0),
        };
        check(
            "initdb",
            cluster
                .command("initdb")
                .arg("-D")
                .arg(cluster.data_dir())
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"])
                .output()?,
        )?;
        // A port is free when chosen but could be taken before the server binds it: try again.
        let mut last = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            match cluster.start_server() {
                Ok(()) => return Ok(cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("PostgreSQL did not start")))
    }

    fn command_as(as_root: bool, program: impl AsRef<std::ffi::OsStr>) -> Command {
        if as_root {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", SERVICE_USER, "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        }
    }

    /// A server program of the cluster, run as the user the cluster belongs to.
    fn command(&self, program: &str) -> Command {
        Self::command_as(self.as_root, self.bin.join(program))
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn start_server(&self) -> io::Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 -F",
            self.port,
            self.dir.display()
        );
        check(
            "pg_ctl start",
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.dir.join("server.log"))
                .args(["-w", "-t", "60", "-o", &options, "start"])
                .output()?,
        )
    }

    /// Starts the server again after [`Cluster::stop`], on the same port with the same data.
    pub fn restart(&self) -> io::Result<()> {
        self.start_server()
    }

    /// Stops the server (fast shutdown: open sessions are ended), keeping its data.
    pub fn stop(&self) -> io::Result<()> {
        check(
            "pg_ctl stop",
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", "fast", "-w", "stop"])
                .output()?,
        )
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The folder the cluster lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The URL of database `db` for the `postgres` superuser.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs one SQL statement with `psql` in database `db`; its output (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> io::Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-d")
            .arg(db)
            .arg("-c")
            .arg(sql)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        check("psql", out)?;
        Ok(text)
    }

    /// Creates a new, empty database named after `prefix` (made unique) and returns its URL.
    pub fn create_database(&self, prefix: &str) -> io::Result<String> {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let clean: String = prefix
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
            .take(40)
            .collect();
        let name = format!("{clean}_{n}");
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        Ok(self.url(&name))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Closing the pipe tells the watcher to stop the server and remove the folder.
        if let Ok(mut stdin) = self.watcher_stdin.lock()
            && let Some(mut pipe) = stdin.take()
        {
            let _ = pipe.flush();
        }
        if let Ok(mut watcher) = self.watcher.lock()
            && let Some(mut child) = watcher.take()
        {
            let _ = child.wait();
        }
    }
}
