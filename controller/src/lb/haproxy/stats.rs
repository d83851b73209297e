//! Parsers for the runtime API's `show servers state`, `show stat` and `show info`
//! replies, tested on outputs captured from HAProxy 2.6.12 (`testdata/`). Pure.
//!
//! Columns are found by the names in the header line, not by position, so that a
//! version adding columns does not shift what is read.

use std::net::Ipv4Addr;

use serde::Deserialize;

use super::runtime_api::ProcessInfo;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("no header line")]
    NoHeader,
    #[error("column `{0}` is missing")]
    MissingColumn(&'static str),
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
}

/// `srv_admin_state` bits (HAProxy's `SRV_ADMF_*`).
pub mod admin_bits {
    /// Forced maintenance (`set server ... state maint`).
    pub const FMAINT: u8 = 0x01;
    /// Maintenance inherited from a tracked server.
    pub const IMAINT: u8 = 0x02;
    /// Configured `disabled`: kept as a marker after the server is made ready.
    pub const CMAINT: u8 = 0x04;
    /// Forced drain.
    pub const FDRAIN: u8 = 0x08;
    /// Drain inherited from a tracked server.
    pub const IDRAIN: u8 = 0x10;
    /// Maintenance because the address does not resolve.
    pub const RMAINT: u8 = 0x20;
    /// Maintenance because the hostname is being resolved.
    pub const HMAINT: u8 = 0x40;
}

/// One line of `show servers state`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerState {
    pub backend_id: u32,
    pub backend: String,
    pub id: u32,
    pub name: String,
    pub addr: Ipv4Addr,
    pub port: u16,
    /// 0 stopped, 1 starting, 2 running, 3 stopping.
    pub op_state: u8,
    pub admin_state: u8,
    pub user_weight: u32,
}

impl ServerState {
    /// In maintenance, by command or otherwise (the configuration's `disabled` marker
    /// alone does not count: it stays set on a slot that was made ready).
    pub fn in_maintenance(&self) -> bool {
        use admin_bits::*;
        self.admin_state & (FMAINT | IMAINT | RMAINT | HMAINT) != 0
    }

    pub fn draining(&self) -> bool {
        use admin_bits::*;
        self.admin_state & (FDRAIN | IDRAIN) != 0
    }

    /// Operationally running: checks pass (or are off) and not in maintenance.
    pub fn running(&self) -> bool {
        self.op_state == 2 && !self.in_maintenance()
    }
}

/// Parses `show servers state [backend]` (format version 1).
pub fn parse_servers_state(text: &str) -> Result<Vec<ServerState>, ParseError> {
    let mut lines = text.lines().enumerate();
    let mut header: Option<Vec<&str>> = None;
    for (_, line) in lines.by_ref() {
        if let Some(h) = line.strip_prefix("# ") {
            header = Some(h.split_whitespace().collect());
            break;
        }
    }
    let header = header.ok_or(ParseError::NoHeader)?;
    let col = |name: &'static str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or(ParseError::MissingColumn(name))
    };
    let (be_id, be_name, srv_id, srv_name, srv_addr, op, admin, uweight, port) = (
        col("be_id")?,
        col("be_name")?,
        col("srv_id")?,
        col("srv_name")?,
        col("srv_addr")?,
        col("srv_op_state")?,
        col("srv_admin_state")?,
        col("srv_uweight")?,
        col("srv_port")?,
    );
    let mut servers = Vec::new();
    for (n, line) in lines {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let at = |i: usize| -> Result<&str, ParseError> {
            fields.get(i).copied().ok_or_else(|| ParseError::Line {
                line: n + 1,
                message: format!("{} fields, expected {}", fields.len(), header.len()),
            })
        };
        let num = |i: usize| -> Result<u64, ParseError> {
            let text = at(i)?;
            text.parse().map_err(|_| ParseError::Line {
                line: n + 1,
                message: format!("`{}` is not a number in column {}", text, header[i]),
            })
        };
        let addr_text = at(srv_addr)?;
        // A hostname-based server has no IPv4 literal; dockscale's slots always do.
        let addr = addr_text.parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
        servers.push(ServerState {
            backend_id: narrow(num(be_id)?, n)?,
            backend: at(be_name)?.to_owned(),
            id: narrow(num(srv_id)?, n)?,
            name: at(srv_name)?.to_owned(),
            addr,
            port: narrow(num(port)?, n)?,
            op_state: narrow(num(op)?, n)?,
            admin_state: narrow(num(admin)?, n)?,
            user_weight: narrow(num(uweight)?, n)?,
        });
    }
    Ok(servers)
}

fn narrow<T: TryFrom<u64>>(v: u64, line: usize) -> Result<T, ParseError> {
    T::try_from(v).map_err(|_| ParseError::Line {
        line: line + 1,
        message: format!("{v} is out of range"),
    })
}

/// One row of `show stat` (the columns dockscale reads).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct StatRow {
    pub pxname: String,
    /// `BACKEND`, `FRONTEND` or the server's name.
    pub svname: String,
    pub qcur: Option<u64>,
    pub scur: Option<u64>,
    /// The server's `maxconn`.
    pub slim: Option<u64>,
    pub status: String,
    pub weight: Option<u64>,
    /// Sessions per second over the last second.
    pub rate: Option<u64>,
    /// Average queue time over the last 1024 requests, in milliseconds.
    pub qtime: Option<u64>,
    /// Average response time (to the first byte) over the last 1024 requests, in ms.
    pub rtime: Option<u64>,
    /// Average total session time over the last 1024 requests, in milliseconds.
    pub ttime: Option<u64>,
    /// Cumulative sessions (streams: one per HTTP request on a backend).
    #[serde(default)]
    pub stot: Option<u64>,
    /// Cumulative HTTP requests (HTTP proxies only).
    #[serde(default)]
    pub req_tot: Option<u64>,
    /// Cumulative HTTP responses by class, connection and response errors and failed
    /// health checks: what a canary's analysis compares (absent columns read as 0).
    #[serde(default)]
    pub hrsp_1xx: Option<u64>,
    #[serde(default)]
    pub hrsp_2xx: Option<u64>,
    #[serde(default)]
    pub hrsp_3xx: Option<u64>,
    #[serde(default)]
    pub hrsp_4xx: Option<u64>,
    #[serde(default)]
    pub hrsp_5xx: Option<u64>,
    #[serde(default)]
    pub hrsp_other: Option<u64>,
    #[serde(default)]
    pub econ: Option<u64>,
    #[serde(default)]
    pub eresp: Option<u64>,
    #[serde(default)]
    pub chkfail: Option<u64>,
}

impl StatRow {
    pub fn is_backend(&self) -> bool {
        self.svname == "BACKEND"
    }

    /// A server row's cumulative counters, for a canary's analysis.
    pub fn counters(&self) -> crate::model::backend::ServerCounters {
        let n = |v: Option<u64>| v.unwrap_or(0);
        crate::model::backend::ServerCounters {
            responses: [
                self.hrsp_1xx,
                self.hrsp_2xx,
                self.hrsp_3xx,
                self.hrsp_4xx,
                self.hrsp_5xx,
                self.hrsp_other,
            ]
            .into_iter()
            .map(n)
            .sum(),
            http_5xx: n(self.hrsp_5xx),
            failed: n(self.econ) + n(self.eresp),
            rtime_ms: n(self.rtime),
            check_failures: n(self.chkfail),
        }
    }
}

/// Parses `show stat` CSV: a `# `-prefixed header, then one row per proxy or server.
pub fn parse_stat(text: &str) -> Result<Vec<StatRow>, ParseError> {
    let body = text
        .trim_start()
        .strip_prefix("# ")
        .ok_or(ParseError::NoHeader)?;
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(body.as_bytes());
    let mut rows = Vec::new();
    for (n, row) in reader.deserialize::<StatRow>().enumerate() {
        let row = row.map_err(|e| ParseError::Line {
            line: n + 2,
            message: e.to_string(),
        })?;
        rows.push(row);
    }
    Ok(rows)
}

/// Parses `show info` (`Name: value` lines).
pub fn parse_info(text: &str) -> Result<ProcessInfo, ParseError> {
    let field = |name: &'static str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .ok_or(ParseError::MissingColumn(name))
    };
    let number = |name: &'static str| -> Result<u64, ParseError> {
        let v = field(name)?;
        v.parse().map_err(|_| ParseError::Line {
            line: 0,
            message: format!("{name} `{v}` is not a number"),
        })
    };
    Ok(ProcessInfo {
        pid: narrow(number("Pid")?, 0)?,
        uptime_sec: number("Uptime_sec")?,
        version: field("Version")?.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FREE: &str = include_str!("testdata/servers_state_free.txt");
    const MIXED: &str = include_str!("testdata/servers_state_mixed.txt");
    const UNDER_LOAD: &str = include_str!("testdata/stat_under_load.csv");

    #[test]
    fn free_slots_are_in_maintenance_at_address_zero() {
        let servers = parse_servers_state(FREE).expect("parses");
        assert_eq!(servers.len(), 3);
        let slot1 = &servers[0];
        assert_eq!(
            (
                slot1.backend_id,
                slot1.backend.as_str(),
                slot1.name.as_str()
            ),
            (3, "web", "slot1")
        );
        assert_eq!(slot1.addr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(slot1.port, 8080);
        assert!(slot1.in_maintenance());
        assert!(!slot1.running());
        assert_eq!(slot1.user_weight, 0);
        // A plain configured server, UP.
        assert!(servers[2].running());
        assert_eq!(servers[2].port, 9);
    }

    #[test]
    fn a_slot_made_ready_keeps_the_config_marker_but_is_not_in_maintenance() {
        let servers = parse_servers_state(MIXED).expect("parses");
        // slot1: admin 4 (CMAINT only), op 0 (its check had not passed yet).
        assert_eq!(servers[0].admin_state, admin_bits::CMAINT);
        assert!(!servers[0].in_maintenance());
        assert_eq!(
            servers[0].addr,
            "172.17.0.2".parse::<Ipv4Addr>().expect("ip")
        );
        // slot2: admin 12 = CMAINT | FDRAIN, running.
        assert!(servers[1].draining());
        assert!(servers[1].running());
        // static1: admin 1 = FMAINT.
        assert!(servers[2].in_maintenance());
    }

    #[test]
    fn stat_rows_carry_queue_and_sessions_by_column_name() {
        let rows = parse_stat(UNDER_LOAD).expect("parses");
        assert_eq!(rows.len(), 4);
        let backend = rows.iter().find(|r| r.is_backend()).expect("backend row");
        assert_eq!(backend.pxname, "web");
        // HAProxy counts queued streams in the backend's scur too.
        assert_eq!((backend.scur, backend.qcur), (Some(20), Some(12)));
        let slot1 = rows.iter().find(|r| r.svname == "slot1").expect("slot1");
        assert_eq!((slot1.scur, slot1.slim), (Some(8), Some(8)));
        assert_eq!(slot1.status, "UP");
        let static1 = rows
            .iter()
            .find(|r| r.svname == "static1")
            .expect("static1");
        assert_eq!(static1.slim, None);
        assert_eq!(static1.status, "MAINT");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for text in ["", "garbage", "# be_id\n1 2 3", "1\n# be_id be_name\n"] {
            assert!(parse_servers_state(text).is_err(), "{text:?}");
        }
        assert_eq!(parse_stat("Unknown command."), Err(ParseError::NoHeader));
        let truncated = "1\n\
            # be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight \
            srv_iweight srv_port\n\
            3 web 1";
        assert!(matches!(
            parse_servers_state(truncated),
            Err(ParseError::Line { line: 3, .. })
        ));
        assert!(parse_stat("# pxname,svname,qcur\nweb,BACKEND,notanumber\n").is_err());
    }

    #[test]
    fn info_names_the_process() {
        let info = parse_info(
            "Name: HAProxy\nVersion: 2.6.12-1+deb12u4\nRelease_date: 2026/10/17\n\
             Pid: 8624\nUptime: 0d 0h00m00s\nUptime_sec: 42\n",
        )
        .expect("parses");
        assert_eq!(info.pid, 8624);
        assert_eq!(info.uptime_sec, 42);
        assert_eq!(info.version, "2.6.12-1+deb12u4");
    }

    #[test]
    fn a_servers_response_and_error_counters_are_read_for_the_analysis() {
        let rows = parse_stat(UNDER_LOAD).expect("parses");
        let slot1 = rows.iter().find(|r| r.svname == "slot1").expect("slot1");
        let c = slot1.counters();
        assert_eq!(
            (c.responses, c.http_5xx, c.failed, c.check_failures),
            (1, 0, 0, 1)
        );
    }
}
