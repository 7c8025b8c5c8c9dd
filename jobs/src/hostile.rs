//! Hostile records for `events.raw`: what a broken or malicious producer can
//! put on the topic. Each one must end on `events.valid` or, with a reason
//! code, on `events.dlq`; none may stop or crash the validation stage. Used by
//! `lifecycle-bench hostile` (100,000 and more) and by an integration test.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::Utc;
use lifecycle_connectors::kafka::sink::{KafkaSink, OutRecord};
use lifecycle_pipeline::dlq::DlqRecord;
use lifecycle_pipeline::{Topic, Validator, envelope_codec, wire};
use lifecycle_schemas::SchemaFiles;
use serde_json::{Value, json};

use crate::LifecycleConfig;
use crate::stages::validate::{self, StageHandle};
use crate::workload::{AvroEncoder, Workload};

/// What a hostile record is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A good Avro event (the control group).
    Valid,
    /// Avro cut at a random length.
    TruncatedAvro,
    /// A Confluent header naming an unregistered schema id (0, huge, random).
    WrongSchemaId,
    /// Random bits of a good Avro event flipped.
    BitFlippedAvro,
    /// An Avro string whose length prefix claims up to 2^62 bytes.
    HugeAvroLength,
    /// An Avro string that is not UTF-8.
    InvalidUtf8Avro,
    /// Random bytes, any length up to 4 KiB.
    RandomBytes,
    /// An empty record value.
    Empty,
    /// JSON nested thousands deep (as a whole, or inside `event_properties`).
    DeepJson,
    /// A property of up to 900 KB.
    HugeString,
    /// A key of 100 KB, a field name of 200 KB.
    HugeNames,
    /// JSON text that is not UTF-8.
    InvalidUtf8Json,
    /// Strings where numbers belong and the other way round, arrays for objects.
    WrongTypes,
    /// U+0000 in values and keys.
    NulCharacters,
    /// Numbers beyond every range (1e400, -2^70, NaN spelled out).
    NumbersOutOfRange,
    /// A lone UTF-16 surrogate escaped in JSON.
    LoneSurrogate,
    /// Thousands of wrong properties in one event.
    ManyErrors,
}

impl Kind {
    /// Every kind, in the order the generator cycles through them.
    pub const ALL: [Kind; 17] = [
        Self::Valid,
        Self::TruncatedAvro,
        Self::WrongSchemaId,
        Self::BitFlippedAvro,
        Self::HugeAvroLength,
        Self::InvalidUtf8Avro,
        Self::RandomBytes,
        Self::Empty,
        Self::DeepJson,
        Self::HugeString,
        Self::HugeNames,
        Self::InvalidUtf8Json,
        Self::WrongTypes,
        Self::NulCharacters,
        Self::NumbersOutOfRange,
        Self::LoneSurrogate,
        Self::ManyErrors,
    ];
}

/// One hostile record.
#[derive(Debug, Clone)]
pub struct Hostile {
    /// What it is made of.
    pub kind: Kind,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value.
    pub payload: Vec<u8>,
    /// Event id of the good event it was made from: its sequence number and
    /// a check, so a mutation that hits the id is never taken for another record.
    pub event_id: String,
}

/// A seeded generator of hostile records (xorshift: the same seed, the same records).
pub struct Generator<'a> {
    workload: Workload,
    encoder: AvroEncoder<'a>,
    state: u64,
    n: u64,
}

impl<'a> Generator<'a> {
    /// A generator drawing good events from `workload` and encoding them with `encoder`.
    pub fn new(workload: Workload, encoder: AvroEncoder<'a>, seed: u64) -> Self {
        Self { workload, encoder, state: seed | 1, n: 0 }
    }

    fn next_u64(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    fn avro(&mut self, event: &Value) -> Vec<u8> {
        self.encoder.encode(event).unwrap_or_default()
    }

    /// The next record; kinds take turns, so any run of 17 holds each once.
    pub fn next_record(&mut self) -> Hostile {
        let kind = Kind::ALL[(self.n % Kind::ALL.len() as u64) as usize];
        self.n += 1;
        let mut event = self.workload.next_event();
        let seq = self.n - 1;
        event["event_id"] = json!(event_id_of(seq));
        let user = event["user_id"].as_str().unwrap_or("u").as_bytes().to_vec();
        let mut key = Some(user.clone());
        let payload = match kind {
            Kind::Valid => self.avro(&event),
            Kind::TruncatedAvro => {
                let full = self.avro(&event);
                let at = self.below(full.len());
                full[..at].to_vec()
            }
            Kind::WrongSchemaId => {
                let full = self.avro(&event);
                let id = match self.below(3) {
                    0 => 0,
                    1 => u32::MAX,
                    _ => 1_000_000 + self.below(1_000_000) as u32,
                };
                wire::frame(id, &full[5..])
            }
            Kind::BitFlippedAvro => {
                let mut p = self.avro(&event);
                for _ in 0..1 + self.below(8) {
                    // Past the header: the body is what the decoder must survive.
                    let i = 5 + self.below(p.len().saturating_sub(5));
                    if let Some(b) = p.get_mut(i) {
                        *b ^= 1 << self.below(8);
                    }
                }
                p
            }
            Kind::HugeAvroLength => {
                let full = self.avro(&event);
                let mut p = full[..5].to_vec();
                // A zigzag varint for a length between 2^31 and 2^62, then a few bytes.
                let len: u64 = (1 << 31) + self.next_u64() % (1 << 62);
                let mut z = len << 1;
                while z >= 0x80 {
                    p.push((z as u8) | 0x80);
                    z >>= 7;
                }
                p.push(z as u8);
                p.extend_from_slice(b"abc");
                p
            }
            Kind::InvalidUtf8Avro => {
                let mut p = self.avro(&event);
                // Break the user_id's bytes inside the Avro body.
                if let Some(at) = p.windows(user.len()).position(|w| w == user.as_slice()) {
                    p[at] = 0xFF;
                    p[at + user.len() / 2] = 0xC3;
                } else {
                    p.push(0xFF);
                }
                p
            }
            Kind::RandomBytes => {
                let n = self.below(4096);
                (0..n).map(|_| self.next_u64() as u8).collect()
            }
            Kind::Empty => Vec::new(),
            Kind::DeepJson => {
                let depth = 1000 + self.below(if self.n.is_multiple_of(16) { 100_000 } else { 10_000 });
                if self.below(2) == 0 {
                    let mut s = "[".repeat(depth);
                    s.push_str(&"]".repeat(depth));
                    s.into_bytes()
                } else {
                    let inner = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
                    let text = serde_json::to_string(&event).unwrap_or_default();
                    text.replacen("\"event_properties\":{", &format!("\"event_properties\":{{\"deep\":{inner},"), 1)
                        .into_bytes()
                }
            }
            Kind::HugeString => {
                // Mostly beyond the 8 KiB string limit; one in 16 near Kafka's 1 MB record limit.
                let n =
                    if self.n.is_multiple_of(16) { 500_000 + self.below(400_000) } else { 9_000 + self.below(50_000) };
                event["event_properties"]["note"] = json!("x".repeat(n));
                serde_json::to_vec(&event).unwrap_or_default()
            }
            Kind::HugeNames => {
                let big = self.n.is_multiple_of(8);
                key = Some(vec![b'k'; if big { 100_000 } else { 2_000 }]);
                let name = "n".repeat(if big { 200_000 } else { 20_000 });
                event["event_properties"][name] = json!(1);
                serde_json::to_vec(&event).unwrap_or_default()
            }
            Kind::InvalidUtf8Json => {
                let mut p = serde_json::to_vec(&event).unwrap_or_default();
                let at = p.iter().position(|&b| b == b':').map_or(0, |i| i + 2);
                if let Some(b) = p.get_mut(at) {
                    *b = 0xFE;
                }
                p
            }
            Kind::WrongTypes => {
                match self.below(4) {
                    0 => event["timestamp"] = json!("yesterday"),
                    1 => event["user_id"] = json!(12345),
                    2 => event["event_properties"] = json!([1, 2, 3]),
                    _ => event["device_info"] = json!("iPhone"),
                }
                serde_json::to_vec(&event).unwrap_or_default()
            }
            Kind::NulCharacters => {
                if self.below(2) == 0 {
                    event["event_properties"]["a\u{0}b"] = json!(1);
                } else {
                    event["session_id"] = json!("s\u{0}");
                }
                serde_json::to_vec(&event).unwrap_or_default()
            }
            Kind::NumbersOutOfRange => {
                let text = serde_json::to_string(&event).unwrap_or_default();
                let big =
                    ["1e400", "-1180591620717411303424", "1e-400", "123456789012345678901234567890"][self.below(4)];
                text.replacen("\"event_properties\":{", &format!("\"event_properties\":{{\"amount\":{big},"), 1)
                    .into_bytes()
            }
            Kind::LoneSurrogate => {
                let text = serde_json::to_string(&event).unwrap_or_default();
                text.replacen("\"session_id\":\"", "\"session_id\":\"\\ud800", 1).into_bytes()
            }
            Kind::ManyErrors => {
                let props: serde_json::Map<String, Value> = (0..300 + self.below(3000))
                    .map(|i| (format!("p{i}"), json!({"nested": [i, {"x": null}]})))
                    .collect();
                event["event_properties"] = Value::Object(props);
                event["location"] = json!({"city": 5, "country": [], "region": {}, "timezone": false});
                serde_json::to_vec(&event).unwrap_or_default()
            }
        };
        // Every key starts with the record's sequence number, which the DLQ
        // keeps (a key's first 16 KiB), so each outcome maps back to its input.
        key = match key {
            _ if kind == Kind::Empty && self.below(2) == 0 => None,
            Some(k) => Some([format!("h{seq:09}:").into_bytes(), k].concat()),
            None => None,
        };
        Hostile { kind, key, payload, event_id: event_id_of(seq) }
    }
}

/// What became of the records of one kind.
#[derive(Debug, Default, Clone)]
pub struct KindOutcome {
    /// Produced.
    pub sent: usize,
    /// Found on `events.valid`.
    pub valid: usize,
    /// Found on `events.dlq`, by reason code.
    pub dlq: BTreeMap<String, usize>,
}

/// The outcome of a hostile run.
#[derive(Debug, Default)]
pub struct Report {
    /// Records produced to `events.raw`.
    pub records: usize,
    /// Bytes produced.
    pub bytes: usize,
    /// Records on `events.valid` (read_committed).
    pub valid: usize,
    /// Records on `events.dlq`.
    pub dlq: usize,
    /// Valid records whose event id a mutation changed (so they cannot be
    /// matched to their input; they count in `valid`).
    pub valid_with_mutated_id: usize,
    /// The stage's own counters: in, valid, dlq.
    pub stage_counts: (u64, u64, u64),
    /// Seconds from the stage's start until it had consumed every record.
    pub stage_secs: f64,
    /// Peak resident memory of this process, MiB (the stage runs in it).
    pub peak_rss_mib: f64,
    /// Per kind.
    pub kinds: BTreeMap<Kind, KindOutcome>,
    /// Everything that broke the rules; empty when the stage held.
    pub problems: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} hostile records ({:.1} MB) -> {} valid ({} with a mutated event id) + {} dead-lettered = {} (stage counted in {}, valid {}, dlq {}) in {:.1} s, peak RSS {:.0} MiB",
            self.records,
            self.bytes as f64 / 1e6,
            self.valid,
            self.valid_with_mutated_id,
            self.dlq,
            self.valid + self.dlq,
            self.stage_counts.0,
            self.stage_counts.1,
            self.stage_counts.2,
            self.stage_secs,
            self.peak_rss_mib
        )?;
        writeln!(f, "| kind | sent | valid | dead-lettered (reason: count) |")?;
        writeln!(f, "|---|---|---|---|")?;
        for (kind, o) in &self.kinds {
            let reasons: Vec<String> = o.dlq.iter().map(|(r, n)| format!("{r}: {n}")).collect();
            writeln!(f, "| {kind:?} | {} | {} | {} |", o.sent, o.valid, reasons.join(", "))?;
        }
        if self.problems.is_empty() {
            writeln!(f, "no problem: every record ended exactly once, every dead letter with a reason")
        } else {
            writeln!(f, "{} problems:", self.problems.len())?;
            self.problems.iter().take(20).try_for_each(|p| writeln!(f, "  {p}"))
        }
    }
}

/// Produces `n` hostile records (seeded) to the `events.raw` of `cfg` (whose
/// topics and schemas must exist; `raw_envelope_id` is the envelope's id
/// there), runs the validation stage in this process until it has consumed
/// them all (at most `timeout`), and checks what came out.
pub async fn run(
    cfg: &LifecycleConfig,
    raw_envelope_id: u32,
    n: usize,
    seed: u64,
    timeout: Duration,
) -> Result<Report, String> {
    let files = SchemaFiles::load(&cfg.schemas_dir()).map_err(|e| e.to_string())?;
    let envelope = files.envelope().map_err(|e| e.to_string())?;
    let validator = Validator::new(Arc::new(files.catalog().map_err(|e| e.to_string())?), Default::default());
    let encoder = AvroEncoder { validator: &validator, envelope: &envelope, schema_id: raw_envelope_id };
    let workload = Workload::new(seed, 1000, &format!("{}hostile", cfg.topics.prefix), Utc::now());
    let mut generator = Generator::new(workload, encoder, seed);
    let topic = cfg.topics.name(Topic::EventsRaw);
    let sink = KafkaSink::new(&cfg.kafka).map_err(|e| e.to_string())?;
    let mut report = Report { records: n, ..Report::default() };
    let mut kinds = Vec::with_capacity(n);
    let mut produced = 0;
    while produced < n {
        let chunk: Vec<Hostile> = (0..(n - produced).min(500)).map(|_| generator.next_record()).collect();
        let records: Vec<OutRecord> = chunk
            .iter()
            .map(|h| OutRecord {
                topic: topic.clone(),
                key: h.key.clone(),
                payload: h.payload.clone(),
                headers: vec![],
            })
            .collect();
        sink.send_all(&records).await.map_err(|e| format!("produce: {e}"))?;
        for h in chunk {
            report.bytes += h.payload.len() + h.key.as_ref().map_or(0, Vec::len);
            report.kinds.entry(h.kind).or_default().sent += 1;
            kinds.push(h.kind);
        }
        produced = kinds.len();
    }

    let handle = StageHandle::new().map_err(|e| e.to_string())?;
    let started = Instant::now();
    if let Err(e) = validate::run_until(cfg, &handle, n as u64, timeout).await {
        report.problems.push(format!("the stage failed: {e}"));
    }
    report.stage_secs = started.elapsed().as_secs_f64();
    report.stage_counts = handle.counts();
    report.peak_rss_mib = peak_rss_kib() as f64 / 1024.0;
    if report.stage_counts.0 < n as u64 {
        report.problems.push(format!("the stage consumed {} of {n} records in {timeout:?}", report.stage_counts.0));
    }

    // Each input must come out exactly once.
    let mut seen = vec![0u8; n];
    let mut empty_without_key = 0;
    for (_, _, _, payload) in crate::demo::read_from(cfg, &cfg.topics.name(Topic::EventsValid), &BTreeMap::new())? {
        report.valid += 1;
        let seq = payload.get(5..).and_then(|b| envelope_codec::decode(b).ok()).and_then(|v| seq_of(v.event_id));
        match seq.filter(|&s| s < n) {
            Some(seq) => {
                seen[seq] += 1;
                report.kinds.entry(kinds[seq]).or_default().valid += 1;
            }
            // A bit flip that hit the event id and left a valid event.
            None => report.valid_with_mutated_id += 1,
        }
    }
    for (p, o, _, payload) in crate::demo::read_from(cfg, &cfg.topics.name(Topic::EventsDlq), &BTreeMap::new())? {
        report.dlq += 1;
        let rec: DlqRecord = match serde_json::from_slice(&payload) {
            Ok(r) => r,
            Err(e) => {
                report.problems.push(format!("dlq {p}/{o} is not a DLQ record: {e}"));
                continue;
            }
        };
        if rec.message.is_empty() || rec.errors.is_empty() {
            report.problems.push(format!("dlq {p}/{o} has no message or no field errors"));
        }
        let seq = rec.original_key_base64.as_deref().and_then(|k| {
            let key = base64::engine::general_purpose::STANDARD.decode(k).ok()?;
            std::str::from_utf8(key.get(1..10)?).ok()?.parse::<usize>().ok()
        });
        let kind = match seq {
            Some(seq) if seq < n => {
                seen[seq] += 1;
                kinds[seq]
            }
            _ if rec.original_key_base64.is_none() && rec.original_base64.is_empty() => {
                empty_without_key += 1;
                Kind::Empty
            }
            _ => {
                report.problems.push(format!("dlq {p}/{o} matches no input"));
                continue;
            }
        };
        let reason = serde_json::to_value(rec.reason).ok().and_then(|v| v.as_str().map(str::to_owned));
        *report.kinds.entry(kind).or_default().dlq.entry(reason.unwrap_or_default()).or_default() += 1;
    }
    let keyless_empty = kinds.iter().zip(&seen).filter(|(k, s)| **k == Kind::Empty && **s == 0).count();
    if keyless_empty != empty_without_key {
        report.problems.push(format!("{keyless_empty} keyless empty records in, {empty_without_key} dead-lettered"));
    }
    let twice = seen.iter().filter(|&&s| s > 1).count();
    if twice > 0 {
        report.problems.push(format!("{twice} records came out more than once"));
    }
    if report.valid + report.dlq != n {
        report.problems.push(format!("in {n} != valid {} + dlq {}", report.valid, report.dlq));
    }
    let lost_valid = kinds.iter().zip(&seen).filter(|(k, s)| **k == Kind::Valid && **s == 0).count();
    if lost_valid > 0 {
        report.problems.push(format!("{lost_valid} good records missing from events.valid"));
    }
    Ok(report)
}

/// This process's peak resident set (VmHWM), KiB; 0 where /proc is missing.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim().parse().ok()))
        .unwrap_or(0)
}

/// The event id of hostile record `seq`: the number and a check of it.
fn event_id_of(seq: u64) -> String {
    format!("hostile-{seq:09}-{:08x}", check(seq))
}

fn check(seq: u64) -> u32 {
    (seq.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32
}

/// The sequence number in an event id of [`event_id_of`], if intact.
fn seq_of(id: &str) -> Option<usize> {
    let (seq_text, sum) = id.strip_prefix("hostile-")?.split_once('-')?;
    let seq: u64 = seq_text.parse().ok()?;
    // Compared as text: a flipped case bit still parses as the same hex number.
    (seq_text.len() == 9 && sum == format!("{:08x}", check(seq))).then_some(seq as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flipped_bit_in_an_event_id_never_names_another_record() {
        for seq in [0u64, 7, 1789, 99_999] {
            let id = event_id_of(seq);
            assert_eq!(seq_of(&id), Some(seq as usize));
            for i in 0..id.len() {
                for bit in 0..8 {
                    let mut b = id.clone().into_bytes();
                    b[i] ^= 1 << bit;
                    if let Ok(flipped) = String::from_utf8(b) {
                        assert_eq!(seq_of(&flipped), None, "{flipped}");
                    }
                }
            }
        }
    }
}
