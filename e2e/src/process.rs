//! Child processes: signals, bounded waits, log tails.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};

/// Sends SIGTERM and waits up to `grace` for the exit; SIGKILL after that.
pub(crate) async fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let _ = kill_process(Pid::from_child(child), Signal::TERM);
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kill(child);
    None
}

/// Sends `sig` to a child that has not been reaped.
pub(crate) fn signal(child: &Child, sig: Signal) {
    let _ = kill_process(Pid::from_child(child), sig);
}

/// SIGKILL and reap.
pub(crate) fn kill(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The file's contents, empty when it cannot be read.
pub(crate) fn read_log(path: &Path) -> String {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// The last `n` lines of a log, for failure messages.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A loopback port that was free a moment ago, for a server that is restarted on the same port
/// (Redis, the key service); its starter retries when another process took it meanwhile.
///
/// It is below the range the kernel hands out for port 0 and for outgoing connections
/// (`net.ipv4.ip_local_port_range`): a port from that range could be given to another test's
/// listener while the server is down (a test once had the rate-limit service talking to an HTTP
/// server on its restarted Redis's port).
pub(crate) fn stable_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next().and_then(|n| n.parse::<u16>().ok()))
        .unwrap_or(32_768);
    let (first, last) = (10_000u16, low.saturating_sub(1).max(10_001));
    let span = u32::from(last - first);
    for _ in 0..200 {
        let mut bytes = [0u8; 4];
        getrandom::fill(&mut bytes).expect("random bytes");
        let port = first + u16::try_from(u32::from_le_bytes(bytes) % span).unwrap_or(0);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {first} and {last}");
}
