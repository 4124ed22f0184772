//! CPU time and memory of a process, from `/proc`.

use std::path::Path;

use crate::{Error, Result};

/// User plus system CPU time of a process, in clock ticks (`utime + stime` of `/proc/PID/stat`).
pub fn parse_cpu_ticks(stat: &str) -> Result<u64> {
    // The command name (field 2) is in parentheses and may hold spaces: count after the last `)`.
    let (_, rest) = stat.rsplit_once(')').ok_or_else(|| Error::from("/proc stat has no `)`"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let tick = |index: usize| -> Result<u64> {
        let text = fields.get(index - 3).ok_or_else(|| Error::from("/proc stat is too short"))?;
        text.parse().map_err(|_| Error(format!("/proc stat field {index} is `{text}`")))
    };
    Ok(tick(14)? + tick(15)?)
}

/// Resident memory in KiB (`VmRSS` of `/proc/PID/status`).
pub fn parse_vm_rss_kib(status: &str) -> Result<u64> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .ok_or_else(|| Error::from("/proc status has no VmRSS"))?;
    let value = line.split_whitespace().next().unwrap_or_default();
    value.parse().map_err(|_| Error(format!("VmRSS is `{}`", line.trim())))
}

/// CPU ticks a process used so far.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    parse_cpu_ticks(&read(&format!("/proc/{pid}/stat"))?)
}

/// Resident memory of a process in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    parse_vm_rss_kib(&read(&format!("/proc/{pid}/status"))?)
}

/// Microseconds of CPU per request from a tick delta.
pub fn cpu_us_per_request(ticks: u64, ticks_per_second: u64, requests: u64) -> Option<f64> {
    if requests == 0 || ticks_per_second == 0 {
        return None;
    }
    Some(ticks as f64 / ticks_per_second as f64 * 1e6 / requests as f64)
}

/// The process whose command line holds every one of `needles` (e.g. a config path), if any.
pub fn find_pid(needles: &[&str]) -> Option<u32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    entries.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        needles.iter().all(|n| cmdline.contains(n)).then_some(pid)
    })
}

fn read(path: &str) -> Result<String> {
    std::fs::read_to_string(Path::new(path)).map_err(|e| Error(format!("read {path}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_utime_plus_stime_even_with_spaces_in_the_name() {
        let stat = "4242 (wrk:worker (0)) S 1 4242 4242 0 -1 4194560 1234 0 0 0 731 269 0 0 20 0 3 0 \
                    100 200000 3000 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat).unwrap(), 1000);
    }

    #[test]
    fn a_truncated_stat_is_an_error() {
        assert!(parse_cpu_ticks("1 (envoy) S 1 2 3").is_err());
        assert!(parse_cpu_ticks("garbage").is_err());
    }

    #[test]
    fn rss_is_read_in_kib() {
        let status = "Name:\tenvoy\nVmPeak:\t  900000 kB\nVmRSS:\t   51234 kB\nThreads:\t12\n";
        assert_eq!(parse_vm_rss_kib(status).unwrap(), 51_234);
        assert!(parse_vm_rss_kib("Name:\tenvoy\n").is_err());
    }

    #[test]
    fn cpu_per_request_in_microseconds() {
        // 250 ticks at 100 Hz = 2.5 s of CPU over 100 000 requests = 25 µs each.
        let us = cpu_us_per_request(250, 100, 100_000).unwrap();
        assert!((us - 25.0).abs() < 1e-9);
        assert_eq!(cpu_us_per_request(250, 100, 0), None);
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(cpu_ticks(pid).is_ok());
    }
}
