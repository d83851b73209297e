//! Figures: medians, wrk's report, a process's RSS and CPU time, the machine.

use std::process::Command;
use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn median_range(samples: &[f64]) -> Option<Stats> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some(Stats {
        median,
        min: s[0],
        max: s[n - 1],
    })
}

pub fn fmt_stats(samples: &[f64], digits: usize) -> String {
    match median_range(samples) {
        Some(Stats { median, min, max }) => {
            format!("{median:.digits$} ({min:.digits$}–{max:.digits$})")
        }
        None => "-".to_owned(),
    }
}

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

pub fn today() -> String {
    output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
}

/// CPU, cores, memory, kernel, Docker and HAProxy versions.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let haproxy = output("haproxy", &["-v"]);
    let docker = output(
        "docker",
        &[
            "version",
            "--format",
            "{{.Server.Version}} (API {{.Server.APIVersion}})",
        ],
    );
    format!(
        "- CPU: {model}, {cores} cores\n\
         - Memory: {mem_gib:.1} GiB\n\
         - Kernel: {}\n\
         - Docker engine: {}\n\
         - {}\n\
         - wrk: {}, docker-compose: {}",
        output("uname", &["-r"]),
        docker,
        haproxy.lines().next().unwrap_or("HAProxy: unknown"),
        Command::new("wrk")
            .arg("-v")
            .output()
            .map(|o| {
                let all = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                all.lines().next().unwrap_or("").to_owned()
            })
            .unwrap_or_default(),
        output("docker-compose", &["version", "--short"]),
    )
}

/// What wrk reported.
#[derive(Clone, Debug, Default)]
pub struct WrkReport {
    pub requests: u64,
    /// Non-2xx/3xx responses plus socket errors.
    pub failed: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

fn latency_ms(text: &str) -> Option<f64> {
    let (num, unit): (String, String) = text.chars().partition(|c| c.is_ascii_digit() || *c == '.');
    let v: f64 = num.parse().ok()?;
    Some(match unit.as_str() {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        "m" => v * 60_000.0,
        _ => return None,
    })
}

/// Parses `wrk --latency` output.
pub fn parse_wrk(text: &str) -> WrkReport {
    let mut r = WrkReport::default();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("50%") {
            r.p50_ms = latency_ms(rest.trim()).unwrap_or(0.0);
        } else if let Some(rest) = line.strip_prefix("99%") {
            r.p99_ms = latency_ms(rest.trim()).unwrap_or(0.0);
        } else if line.contains(" requests in ") {
            r.requests = line
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.failed += rest.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            r.failed += rest
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    r
}

/// Resident memory (bytes) and CPU time (user + system) of a process.
pub fn proc_usage(pid: u32) -> Option<(u64, Duration)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of /proc/pid/stat (utime, stime), counted after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hz = 100; // USER_HZ on Linux
    Some((rss_kib * 1024, Duration::from_millis(ticks * 1000 / hz)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read() {
        let text = "Running 10s test @ http://127.0.0.1:8080/
  2 threads and 32 connections
  Latency Distribution
     50%  412.00us
     75%    1.02ms
     90%    2.10ms
     99%   12.50ms
  123456 requests in 10.00s, 20.00MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec:  12345.60
";
        let r = parse_wrk(text);
        assert_eq!(r.requests, 123_456);
        assert_eq!(r.failed, 12);
        assert!((r.p50_ms - 0.412).abs() < 1e-9);
        assert!((r.p99_ms - 12.5).abs() < 1e-9);
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        let s = median_range(&[3.0, 1.0, 2.0]).expect("stats");
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(
            median_range(&[1.0, 2.0, 4.0, 8.0]).expect("stats").median,
            3.0
        );
        assert!(median_range(&[]).is_none());
    }
}
