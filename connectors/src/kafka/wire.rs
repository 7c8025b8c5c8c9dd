//! A minimal Kafka protocol client for the administrative requests librdkafka
//! does not offer (`DescribeProducers`, `ListTransactions`,
//! `DescribeTransactions`, `WriteTxnMarkers`): one TCP connection to one
//! broker, requests sent one at a time, the version of each request the
//! highest both sides speak (from `ApiVersions`). PLAINTEXT listeners only.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiVersionsRequest, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::config::KafkaConfig;

/// Why a request to a broker failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct WireError(pub String);

fn wire_err(what: impl std::fmt::Display) -> WireError {
    WireError(what.to_string())
}

/// Largest response accepted (a broker's metadata for thousands of partitions
/// fits easily); anything bigger is a protocol error, not an allocation.
const MAX_RESPONSE: usize = 64 << 20;

/// A connection to one broker.
pub struct Connection {
    addr: String,
    stream: TcpStream,
    correlation: i32,
    timeout: Duration,
    /// API key -> (min, max) version the broker accepts.
    versions: HashMap<i16, (i16, i16)>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// Refuses configurations this client cannot honour: it speaks PLAINTEXT only,
/// so a cluster reached over TLS or SASL needs Kafka's own tools instead.
pub fn check_plaintext(cfg: &KafkaConfig) -> Result<(), WireError> {
    match cfg.properties.get("security.protocol").map(|p| p.to_ascii_lowercase()) {
        None => Ok(()),
        Some(p) if p == "plaintext" => Ok(()),
        Some(p) => Err(wire_err(format!(
            "security.protocol '{p}' is not supported by the built-in transaction tool (PLAINTEXT only); use Kafka's kafka-transactions.sh"
        ))),
    }
}

impl Connection {
    /// Connects to `addr` (`host:port`) and learns which versions it speaks.
    pub async fn open(addr: &str, timeout: Duration) -> Result<Self, WireError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| wire_err(format!("{addr}: connect timed out")))?
            .map_err(|e| wire_err(format!("{addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let mut c = Self { addr: addr.to_owned(), stream, correlation: 0, timeout, versions: HashMap::new() };
        let req = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("lifecycle"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let resp = c.call_version(&req, 3).await?;
        if resp.error_code != 0 {
            return Err(wire_err(format!("{addr}: ApiVersions failed with error code {}", resp.error_code)));
        }
        c.versions = resp.api_keys.iter().map(|k| (k.api_key, (k.min_version, k.max_version))).collect();
        Ok(c)
    }

    /// Connects to the first bootstrap server of `cfg` that answers.
    pub async fn bootstrap(cfg: &KafkaConfig, timeout: Duration) -> Result<Self, WireError> {
        check_plaintext(cfg)?;
        let mut last = wire_err("kafka.bootstrap_servers is empty");
        for addr in cfg.bootstrap_servers.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            match Self::open(addr, timeout).await {
                Ok(c) => return Ok(c),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The address this connection goes to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The highest version of `R` both this crate and the broker speak.
    pub fn version_of<R: Request>(&self) -> Result<i16, WireError> {
        let (bmin, bmax) = self
            .versions
            .get(&R::KEY)
            .copied()
            .ok_or_else(|| wire_err(format!("{}: the broker does not support API key {}", self.addr, R::KEY)))?;
        let (cmin, cmax) = (R::VERSIONS.min, R::VERSIONS.max);
        let v = bmax.min(cmax);
        if v < bmin.max(cmin) {
            return Err(wire_err(format!(
                "{}: no common version of API key {} (broker {bmin}..{bmax}, client {cmin}..{cmax})",
                self.addr,
                R::KEY
            )));
        }
        Ok(v)
    }

    /// Sends `req` at the highest common version and returns the response.
    pub async fn call<R: Request>(&mut self, req: &R) -> Result<(i16, R::Response), WireError> {
        let v = self.version_of::<R>()?;
        Ok((v, self.call_version(req, v).await?))
    }

    /// Sends `req` at `version` and returns the response.
    pub async fn call_version<R: Request>(&mut self, req: &R, version: i16) -> Result<R::Response, WireError> {
        self.correlation = self.correlation.wrapping_add(1);
        let id = self.correlation;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(id)
            .with_client_id(Some(StrBytes::from_static_str("lifecycle-admin")));
        let mut buf = BytesMut::with_capacity(256);
        buf.extend_from_slice(&[0; 4]);
        header.encode(&mut buf, R::header_version(version)).map_err(wire_err)?;
        req.encode(&mut buf, version).map_err(wire_err)?;
        let len = i32::try_from(buf.len() - 4).map_err(|_| wire_err("request too large"))?;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        let addr = self.addr.clone();
        let exchange = async {
            self.stream.write_all(&buf).await?;
            let n = self.stream.read_i32().await?;
            let n = usize::try_from(n).ok().filter(|n| *n <= MAX_RESPONSE).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("response size {n} out of bounds"))
            })?;
            let mut body = vec![0; n];
            self.stream.read_exact(&mut body).await?;
            Ok::<_, std::io::Error>(body)
        };
        let body = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| wire_err(format!("{addr}: API key {} timed out", R::KEY)))?
            .map_err(|e| wire_err(format!("{addr}: {e}")))?;
        let mut body = Bytes::from(body);
        let rh = ResponseHeader::decode(&mut body, R::Response::header_version(version)).map_err(wire_err)?;
        if rh.correlation_id != id {
            return Err(wire_err(format!("{addr}: response {} to request {id}", rh.correlation_id)));
        }
        R::Response::decode(&mut body, version)
            .map_err(|e| wire_err(format!("{addr}: decoding API key {}: {e}", R::KEY)))
    }
}

/// Kafka's name for an error code (the common ones; others by number).
pub fn error_name(code: i16) -> String {
    let name = match code {
        0 => "NONE",
        3 => "UNKNOWN_TOPIC_OR_PARTITION",
        6 => "NOT_LEADER_OR_FOLLOWER",
        7 => "REQUEST_TIMED_OUT",
        14 => "COORDINATOR_LOAD_IN_PROGRESS",
        15 => "COORDINATOR_NOT_AVAILABLE",
        16 => "NOT_COORDINATOR",
        29 => "TOPIC_AUTHORIZATION_FAILED",
        31 => "CLUSTER_AUTHORIZATION_FAILED",
        35 => "UNSUPPORTED_VERSION",
        47 => "INVALID_PRODUCER_EPOCH",
        48 => "INVALID_TXN_STATE",
        53 => "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
        69 => "TRANSACTIONAL_ID_NOT_FOUND",
        _ => return format!("error code {code}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plaintext_clusters_are_reached() {
        let mut cfg = KafkaConfig::default();
        assert!(check_plaintext(&cfg).is_ok());
        cfg.properties.insert("security.protocol".into(), "PLAINTEXT".into());
        assert!(check_plaintext(&cfg).is_ok());
        cfg.properties.insert("security.protocol".into(), "SASL_SSL".into());
        let e = check_plaintext(&cfg).expect_err("SASL refused").to_string();
        assert!(e.contains("sasl_ssl") && e.contains("kafka-transactions.sh"), "{e}");
    }

    #[test]
    fn error_codes_have_kafkas_names() {
        assert_eq!(error_name(0), "NONE");
        assert_eq!(error_name(6), "NOT_LEADER_OR_FOLLOWER");
        assert_eq!(error_name(999), "error code 999");
    }
}
