//! `lifecycle-bench api-load`: Debian's `wrk` against the REST API (`lifecycle
//! run ingest` as its own process) with many API keys: `POST /events/batch`
//! under the rate limit, `GET /analytics` over a year of daily metrics, and
//! `POST /events/batch` from a few keys far over the limit. Reports throughput,
//! latency percentiles, every status code and the API process's memory; fails
//! when any answer is not the one the phase allows (202 or 200, plus 429 over
//! the limit).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use lifecycle_connectors::http::auth::{ApiKeys, Role};
use lifecycle_jobs::LifecycleConfig;
use lifecycle_jobs::workload::Workload;

use super::Env;
use super::proc::Proc;

/// What to run.
pub struct ApiLoadOptions {
    /// Keys the under-the-limit phases spread their requests over.
    pub keys: usize,
    /// Keys of the over-the-limit phase.
    pub hot_keys: usize,
    /// Seconds of each phase.
    pub secs: u64,
    /// wrk connections.
    pub connections: u32,
    /// Events per batch.
    pub batch: usize,
    /// The `lifecycle` binary.
    pub lifecycle: PathBuf,
}

/// One phase's figures.
pub struct Phase {
    pub name: String,
    pub requests: u64,
    pub seconds: f64,
    pub events_per_request: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub statuses: BTreeMap<u16, u64>,
    /// Socket errors wrk counted (connect, read, write, timeout).
    pub socket_errors: u64,
    /// The API's resident memory at the start and the end of the phase, and its peak (VmHWM) so far, MiB.
    pub rss_start_mib: f64,
    pub rss_end_mib: f64,
    pub peak_mib: f64,
    /// Statuses the phase allows.
    pub allowed: Vec<u16>,
}

impl Phase {
    fn unexpected(&self) -> Vec<(u16, u64)> {
        self.statuses.iter().filter(|(s, _)| !self.allowed.contains(s)).map(|(s, n)| (*s, *n)).collect()
    }
}

/// wrk's Lua: requests rotate over keys (and bodies or paths); each thread
/// counts the statuses it got, and `done` prints them with the latency
/// percentiles in a form [`parse`] reads.
fn lua(keys: &[String], method: &str, paths: &[String], bodies: &[String]) -> String {
    let list = |items: &[String]| items.iter().map(|i| format!("[==[{i}]==]")).collect::<Vec<_>>().join(",\n");
    format!(
        r#"local keys = {{ {keys} }}
local paths = {{ {paths} }}
local bodies = {{ {bodies} }}
local threads = {{}}
local n = 0
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end
function init(args)
  statuses = {{}}
  n = id * 7919
end
function request()
  n = n + 1
  local headers = {{ ["Authorization"] = "Bearer " .. keys[(n % #keys) + 1], ["Content-Type"] = "application/json" }}
  local body = nil
  if #bodies > 0 then body = bodies[(n % #bodies) + 1] end
  return wrk.format("{method}", paths[(n % #paths) + 1], headers, body)
end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    for status, count in pairs(t:get("statuses")) do
      io.write(string.format("STATUS %d %d\n", status, count))
    end
  end
  io.write(string.format("REQUESTS %d\nSECONDS %f\n", summary.requests, summary.duration / 1e6))
  io.write(string.format("ERRORS %d\n", summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
  for _, p in ipairs({{50, 90, 99}}) do
    io.write(string.format("P%d %f\n", p, latency:percentile(p) / 1000))
  end
  io.write(string.format("MAX %f\n", latency.max / 1000))
end
"#,
        keys = list(keys),
        paths = list(paths),
        bodies = list(bodies),
    )
}

/// Reads what the script's `done` printed.
fn parse(name: &str, out: &str, events_per_request: usize, allowed: Vec<u16>) -> Result<Phase, String> {
    let mut p = Phase {
        name: name.to_owned(),
        requests: 0,
        seconds: 0.0,
        events_per_request,
        p50_ms: 0.0,
        p90_ms: 0.0,
        p99_ms: 0.0,
        max_ms: 0.0,
        statuses: BTreeMap::new(),
        socket_errors: 0,
        rss_start_mib: 0.0,
        rss_end_mib: 0.0,
        peak_mib: 0.0,
        allowed,
    };
    let mut seen = false;
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        match f.first().copied() {
            Some("STATUS") => *p.statuses.entry(num(1) as u16).or_default() += num(2) as u64,
            Some("REQUESTS") => {
                p.requests = num(1) as u64;
                seen = true;
            }
            Some("SECONDS") => p.seconds = num(1),
            Some("ERRORS") => p.socket_errors = num(1) as u64,
            Some("P50") => p.p50_ms = num(1),
            Some("P90") => p.p90_ms = num(1),
            Some("P99") => p.p99_ms = num(1),
            Some("MAX") => p.max_ms = num(1),
            _ => {}
        }
    }
    if seen { Ok(p) } else { Err(format!("wrk printed no summary for {name}:\n{out}")) }
}

/// Runs wrk with `script` for `o.secs`, sampling the API's memory meanwhile.
fn wrk(o: &ApiLoadOptions, base: &str, script: &Path, api: &mut Proc) -> Result<(String, f64, f64, f64), String> {
    let mib = |kib: u64| kib as f64 / 1024.0;
    api.sample(0);
    let start = api.samples.last().map_or(0.0, |s| mib(s.rss_kib));
    let mut child = Command::new("wrk")
        .args(["-t", "2", "-c", &o.connections.to_string(), "-d", &format!("{}s", o.secs), "--timeout", "10s", "-s"])
        .arg(script)
        .arg(base)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("wrk: {e} (Debian: apt-get install wrk)"))?;
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        api.sample(0);
        std::thread::sleep(Duration::from_millis(250));
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    api.sample(0);
    let end = api.samples.last().map_or(0.0, |s| mib(s.rss_kib));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        return Err(format!("wrk failed ({}):\n{text}", out.status));
    }
    Ok((text, start, end, mib(api.usage().peak_rss_kib)))
}

/// A year of daily metrics (5 stages x 15 event types x 365 days, 10 users
/// each) in the run's own ClickHouse database, so `GET /analytics` reads real rows.
async fn daily_metrics(cfg: &LifecycleConfig) -> Result<(), String> {
    lifecycle_connectors::clickhouse::migrate::migrate(&cfg.clickhouse).await.map_err(|e| e.to_string())?;
    let ch = lifecycle_connectors::clickhouse::client(&cfg.clickhouse);
    let types: Vec<String> = lifecycle_jobs::workload::MIX.iter().map(|(t, _)| format!("'{t}'")).collect();
    let sql = format!(
        "INSERT INTO metrics_daily \
         SELECT metric_date, 1, lifecycle_stage, event_type, splitByChar('.', event_type)[1], any(events), \
                any(revenue_cents), any(conversions), uniqExactState(user), now() \
         FROM (SELECT today() - (number % 365) AS metric_date, \
                      ['Acquisition', 'Activation', 'Engagement', 'Retention', 'Churned'][(intDiv(number, 365) % 5) + 1] AS lifecycle_stage, \
                      [{types}][(intDiv(number, 1825) % {n}) + 1] AS event_type, \
                      cityHash64(number) % 1000 AS events, toInt64(cityHash64(number, 1) % 100000) AS revenue_cents, \
                      cityHash64(number, 2) % 50 AS conversions, \
                      arrayJoin(arrayMap(i -> concat('u', toString(i + number % 1000)), range(10))) AS user \
               FROM numbers({rows})) \
         GROUP BY metric_date, lifecycle_stage, event_type",
        types = types.join(", "),
        n = types.len(),
        rows = 365 * 5 * types.len(),
    );
    ch.query(&sql).execute().await.map_err(|e| format!("filling metrics_daily: {e}"))?;
    ch.query("INSERT INTO metrics_rollups SELECT today() - number, 1, now() FROM numbers(365)")
        .execute()
        .await
        .map_err(|e| format!("filling metrics_rollups: {e}"))
}

/// `GET /analytics` queries: every metric, dimension set, aggregation and a few ranges.
fn analytics_paths() -> Vec<String> {
    let mut out = Vec::new();
    let dims = ["", "lifecycle_stage", "event_type", "event_category", "lifecycle_stage,event_type"];
    for metric in ["events", "active_users", "revenue", "conversions"] {
        for d in dims {
            for agg in ["day", "week", "month", "total"] {
                for range in ["last_7d", "last_30d", "last_90d", "last_365d"] {
                    let dim = if d.is_empty() { String::new() } else { format!("&dimensions={d}") };
                    out.push(format!("/analytics?metric={metric}{dim}&aggregation={agg}&date_range={range}"));
                }
            }
        }
    }
    out
}

/// One phase: requests rotate over `keys` and `paths` (and `bodies`).
struct Run<'a> {
    name: String,
    keys: &'a [String],
    method: &'static str,
    paths: Vec<String>,
    bodies: &'a [String],
    per: usize,
    allowed: Vec<u16>,
}

/// Runs the three phases against a fresh environment; returns them.
pub async fn run(base: &LifecycleConfig, o: &ApiLoadOptions) -> Result<Vec<Phase>, String> {
    let root = std::env::temp_dir().join("lifecycle-bench");
    let mut env = Env::new(base, &root, "api-load")?;
    env.topics_and_schemas().await?;
    env.fresh("api").await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())?;
    env.cfg.ingest.listen_addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let result = phases(o, &mut env, port).await;
    env.clean(base).await;
    result
}

async fn phases(o: &ApiLoadOptions, env: &mut Env, port: u16) -> Result<Vec<Phase>, String> {
    daily_metrics(&env.cfg).await?;
    let pool =
        lifecycle_connectors::postgres::connect_and_migrate(&env.cfg.postgres).await.map_err(|e| e.to_string())?;
    let mut keys = Vec::with_capacity(o.keys);
    for i in 0..o.keys.max(o.hot_keys) {
        let (_, key) =
            ApiKeys::create(&pool, &format!("bench-{i}"), Role::Operator).await.map_err(|e| e.to_string())?;
        keys.push(key);
    }
    pool.close().await;
    let config = env.config_file("api-load")?;
    let mut cmd = Command::new(&o.lifecycle);
    cmd.args(["run", "ingest"]).env("LIFECYCLE_CONFIG", &config).env("RUST_LOG", "warn");
    let mut api = Proc::spawn("ingest API", &mut cmd, Stdio::null(), &env.dir.join("ingest.log"))?;
    let up = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if up.elapsed() > Duration::from_secs(30) || !api.sample(0) {
            return Err(format!("the API did not start; log {}", env.dir.join("ingest.log").display()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let base = format!("http://127.0.0.1:{port}");

    // Batches of the standard mix, each event with an id of its own (a retried id is still accepted).
    let mut w = Workload::new(5, 100_000, "apiload", chrono::Utc::now());
    let bodies: Vec<String> = (0..200)
        .map(|_| serde_json::json!({ "events": (0..o.batch).map(|_| w.next_event()).collect::<Vec<_>>() }).to_string())
        .collect();
    let batch = vec!["/events/batch".to_owned()];
    let limit = env.cfg.ingest.requests_per_minute;
    let runs = [
        Run {
            name: format!("POST /events/batch ({} events), {} keys, under the limit", o.batch, o.keys),
            keys: &keys[..o.keys],
            method: "POST",
            paths: batch.clone(),
            bodies: &bodies,
            per: o.batch,
            allowed: vec![202],
        },
        Run {
            name: format!(
                "GET /analytics ({} queries over a year of daily metrics), {} keys",
                analytics_paths().len(),
                o.keys
            ),
            keys: &keys[..o.keys],
            method: "GET",
            paths: analytics_paths(),
            bodies: &[],
            per: 0,
            allowed: vec![200],
        },
        Run {
            name: format!(
                "POST /events/batch ({} events), {} keys, over the limit ({limit}/min each)",
                o.batch, o.hot_keys
            ),
            keys: &keys[..o.hot_keys],
            method: "POST",
            paths: batch,
            bodies: &bodies,
            per: o.batch,
            allowed: vec![202, 429],
        },
    ];
    let mut out = Vec::new();
    for (i, run) in runs.into_iter().enumerate() {
        println!("api-load: {} for {} s ...", run.name, o.secs);
        let script = env.dir.join(format!("phase-{i}.lua"));
        std::fs::write(&script, lua(run.keys, run.method, &run.paths, run.bodies)).map_err(|e| e.to_string())?;
        let (text, start, end, peak) = wrk(o, &base, &script, &mut api)?;
        let mut phase = parse(&run.name, &text, run.per, run.allowed)?;
        (phase.rss_start_mib, phase.rss_end_mib, phase.peak_mib) = (start, end, peak);
        println!("{}", row(&phase));
        out.push(phase);
        // Let the over-the-limit phase start from full windows, not the previous phase's.
        if i == 1 {
            std::thread::sleep(Duration::from_secs(61));
        }
    }
    api.stop(0);
    Ok(out)
}

fn row(p: &Phase) -> String {
    let rate = p.requests as f64 / p.seconds.max(1e-9);
    let statuses: Vec<String> = p.statuses.iter().map(|(s, n)| format!("{s}: {n}")).collect();
    let events = if p.events_per_request > 0 {
        let accepted = p.statuses.get(&202).copied().unwrap_or(0) as f64 * p.events_per_request as f64;
        format!("{:.0}", accepted / p.seconds.max(1e-9))
    } else {
        "-".into()
    };
    format!(
        "| {} | {rate:.0} | {events} | {:.1} / {:.1} / {:.1} / {:.0} | {} | {} | {:.0} -> {:.0} (peak {:.0}) |",
        p.name,
        p.p50_ms,
        p.p90_ms,
        p.p99_ms,
        p.max_ms,
        statuses.join(", "),
        p.socket_errors,
        p.rss_start_mib,
        p.rss_end_mib,
        p.peak_mib
    )
}

/// The Markdown section for benches/README.md.
pub fn markdown(o: &ApiLoadOptions, phases: &[Phase], command: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Command: `{command}` (wrk 4.1, 2 threads, {} connections, {} s per phase).\n",
        o.connections, o.secs
    );
    md.push_str("| phase | requests/s | events/s accepted | latency p50 / p90 / p99 / max, ms | statuses | socket errors | API memory, MiB (start -> end) |\n");
    md.push_str("|---|---|---|---|---|---|---|\n");
    for p in phases {
        md.push_str(&row(p));
        md.push('\n');
    }
    md
}

/// Statuses a phase got that it does not allow.
pub fn unexpected(phases: &[Phase]) -> Vec<String> {
    phases
        .iter()
        .flat_map(|p| p.unexpected().into_iter().map(move |(s, n)| format!("{}: {n} x {s}", p.name)))
        .chain(
            phases
                .iter()
                .filter(|p| p.socket_errors > 0)
                .map(|p| format!("{}: {} socket errors", p.name, p.socket_errors)),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_the_script_prints_is_read_back() {
        let out = "Running 1s test\nSTATUS 202 90\nSTATUS 429 10\nSTATUS 202 5\nREQUESTS 105\nSECONDS 1.5\nERRORS 0\nP50 1.5\nP90 3.0\nP99 9.25\nMAX 12.0\n";
        let p = parse("x", out, 100, vec![202, 429]).expect("parsed");
        assert_eq!((p.requests, p.statuses.get(&202), p.statuses.get(&429)), (105, Some(&95), Some(&10)));
        assert_eq!((p.p50_ms, p.p99_ms, p.max_ms, p.seconds), (1.5, 9.25, 12.0, 1.5));
        assert!(p.unexpected().is_empty());
        let p = parse("y", "STATUS 500 1\nREQUESTS 1\nSECONDS 1\n", 0, vec![200]).expect("parsed");
        assert_eq!(p.unexpected(), vec![(500, 1)]);
        assert!(parse("z", "no summary", 0, vec![200]).is_err());
    }

    #[test]
    fn the_analytics_queries_are_distinct_and_every_metric_is_asked() {
        let paths = analytics_paths();
        assert_eq!(paths.len(), 4 * 5 * 4 * 4);
        assert_eq!(paths.iter().collect::<std::collections::HashSet<_>>().len(), paths.len());
        for m in ["events", "active_users", "revenue", "conversions"] {
            assert!(paths.iter().any(|p| p.contains(&format!("metric={m}&"))));
        }
    }
}
