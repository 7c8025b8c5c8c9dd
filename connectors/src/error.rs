//! The connectors' error type: what went wrong talking to Kafka, PostgreSQL or
//! ClickHouse, classified by what a retry can do about it.

/// What kind of failure an error is, which decides what a stage does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The store is down, overloaded or the operation conflicted with another:
    /// the same request may succeed later. Retry with backoff.
    Transient,
    /// The store refused this data (a value it cannot hold, a constraint): the
    /// same request fails again. Find the record responsible and dead-letter it.
    Data,
    /// Configuration or permissions are wrong (unknown database or table,
    /// authentication, privileges): nothing succeeds until an operator acts.
    Config,
}

impl ErrorClass {
    /// Stable snake_case name (metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::Data => "data",
            Self::Config => "config",
        }
    }
}

/// An error from a store or broker.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// PostgreSQL.
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    /// Kafka.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// ClickHouse.
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// A record could not be turned into what the store takes.
    #[error("encoding: {0}")]
    Encode(String),
}

impl ConnectorError {
    /// What kind of failure this is.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Postgres(e) => postgres_class(e),
            Self::Kafka(e) => kafka_class(e),
            Self::ClickHouse(e) => clickhouse_class(e),
            Self::Encode(_) => ErrorClass::Data,
        }
    }

    /// Whether retrying the same operation can help.
    pub fn retryable(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    /// Stable snake_case code: the store and the class (`postgres_data`, ...).
    pub fn code(&self) -> &'static str {
        match (self, self.class()) {
            (Self::Postgres(_), ErrorClass::Transient) => "postgres_unavailable",
            (Self::Postgres(_), ErrorClass::Data) => "postgres_data",
            (Self::Postgres(_), ErrorClass::Config) => "postgres_config",
            (Self::Kafka(_), ErrorClass::Transient) => "kafka_unavailable",
            (Self::Kafka(_), ErrorClass::Data) => "kafka_data",
            (Self::Kafka(_), ErrorClass::Config) => "kafka_config",
            (Self::ClickHouse(_), ErrorClass::Transient) => "clickhouse_unavailable",
            (Self::ClickHouse(_), ErrorClass::Data) => "clickhouse_data",
            (Self::ClickHouse(_), ErrorClass::Config) => "clickhouse_config",
            (Self::Encode(_), _) => "encode_failed",
        }
    }

    /// The store's own code where it has one: PostgreSQL's SQLSTATE, ClickHouse's
    /// exception code, librdkafka's error name.
    pub fn store_code(&self) -> Option<String> {
        match self {
            Self::Postgres(sqlx::Error::Database(d)) => d.code().map(|c| c.into_owned()),
            Self::Postgres(_) | Self::Encode(_) => None,
            Self::Kafka(e) => e.rdkafka_error_code().map(|c| format!("{c:?}")),
            Self::ClickHouse(clickhouse::error::Error::BadResponse(text)) => {
                clickhouse_code(text).map(|c| c.to_string())
            }
            Self::ClickHouse(_) => None,
        }
    }
}

/// The class of a PostgreSQL error, by SQLSTATE where the server sent one
/// (<https://www.postgresql.org/docs/current/errcodes-appendix.html>).
pub fn postgres_class(e: &sqlx::Error) -> ErrorClass {
    match e {
        sqlx::Error::Database(d) => d.code().map_or(ErrorClass::Transient, |c| sqlstate_class(&c)),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => ErrorClass::Transient,
        sqlx::Error::Configuration(_) | sqlx::Error::Migrate(_) => ErrorClass::Config,
        // Rows that do not decode, values that do not encode: the data.
        _ => ErrorClass::Data,
    }
}

/// The class of a SQLSTATE.
pub fn sqlstate_class(code: &str) -> ErrorClass {
    match code {
        // serialization failure, deadlock, lock not available, query canceled
        // (statement timeout), admin shutdown, crash shutdown, cannot connect now
        "40001" | "40P01" | "55P03" | "57014" | "57P01" | "57P02" | "57P03" => ErrorClass::Transient,
        // invalid catalog (database) name, insufficient privilege
        "3D000" | "42501" => ErrorClass::Config,
        _ => match code.get(..2) {
            // connection exception, insufficient resources, system error, internal error
            Some("08" | "53" | "58" | "XX") => ErrorClass::Transient,
            // data exception, integrity constraint violation
            Some("22" | "23") => ErrorClass::Data,
            // invalid authorization, syntax error or undefined object (a schema
            // the code does not match), object not in prerequisite state
            Some("28" | "42" | "55" | "0A") => ErrorClass::Config,
            _ => ErrorClass::Data,
        },
    }
}

fn kafka_class(e: &rdkafka::error::KafkaError) -> ErrorClass {
    use rdkafka::types::RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(
            C::MessageSizeTooLarge | C::InvalidMessage | C::InvalidMessageSize | C::InvalidRecord | C::InvalidArgument,
        ) => ErrorClass::Data,
        Some(
            C::TopicAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::Authentication
            | C::UnknownTopic
            | C::UnknownTopicOrPartition
            | C::InvalidTopic,
        ) => ErrorClass::Config,
        _ => ErrorClass::Transient,
    }
}

/// ClickHouse's exception code in an error response ("Code: 60, ..." or
/// "Code: 60. DB::Exception: ...").
fn clickhouse_code(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + 6..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn clickhouse_class(e: &clickhouse::error::Error) -> ErrorClass {
    use clickhouse::error::Error as E;
    match e {
        E::Network(_) | E::TimedOut => ErrorClass::Transient,
        E::BadResponse(text) => match clickhouse_code(text) {
            // timeouts, memory and concurrency limits, too many parts, network,
            // read-only replica, shutting down, system errors
            Some(159 | 160 | 164 | 202 | 203 | 209 | 210 | 241 | 242 | 252 | 279 | 319 | 394 | 425 | 999) => {
                ErrorClass::Transient
            }
            // unknown table/database/column/identifier, syntax, auth and access
            Some(16 | 47 | 60 | 62 | 81 | 192 | 193 | 194 | 195 | 291 | 497 | 516) => ErrorClass::Config,
            Some(_) => ErrorClass::Data,
            // An HTTP error without a ClickHouse exception: a proxy or the server
            // going away, not the data.
            None => ErrorClass::Transient,
        },
        _ => ErrorClass::Data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified_by_what_a_retry_can_do() {
        for transient in ["08006", "08001", "40001", "40P01", "53300", "57P01", "57P03", "57014", "XX000"] {
            assert_eq!(sqlstate_class(transient), ErrorClass::Transient, "{transient}");
        }
        // NUL in JSONB (22P05), too long for varchar (22001), numeric overflow,
        // NUL byte in text (22021), unique, foreign key, check constraints.
        for data in ["22P05", "22001", "22003", "22021", "23505", "23503", "23514", "23502"] {
            assert_eq!(sqlstate_class(data), ErrorClass::Data, "{data}");
        }
        for config in ["3D000", "42501", "42P01", "28P01", "42703"] {
            assert_eq!(sqlstate_class(config), ErrorClass::Config, "{config}");
        }
    }

    #[test]
    fn io_and_pool_failures_are_transient() {
        let io = ConnectorError::Postgres(sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)));
        assert!(io.retryable());
        assert_eq!(io.code(), "postgres_unavailable");
        assert!(ConnectorError::Postgres(sqlx::Error::PoolTimedOut).retryable());
        let decode = ConnectorError::Postgres(sqlx::Error::Decode("bad".into()));
        assert_eq!((decode.class(), decode.code()), (ErrorClass::Data, "postgres_data"));
    }

    #[test]
    fn clickhouse_errors_are_classified_by_their_exception_code() {
        let bad = |t: &str| ConnectorError::ClickHouse(clickhouse::error::Error::BadResponse(t.into()));
        let parse = bad("Code: 27, e.displayText() = DB::Exception: Cannot parse input, e.what() = DB::Exception");
        assert_eq!((parse.class(), parse.store_code().as_deref()), (ErrorClass::Data, Some("27")));
        assert_eq!(bad("Code: 60. DB::Exception: Table t.events doesn't exist").class(), ErrorClass::Config);
        assert_eq!(
            bad("Code: 241, e.displayText() = DB::Exception: Memory limit exceeded").class(),
            ErrorClass::Transient
        );
        assert_eq!(bad("502 Bad Gateway").class(), ErrorClass::Transient);
        assert!(ConnectorError::ClickHouse(clickhouse::error::Error::TimedOut).retryable());
    }

    #[test]
    fn kafka_errors_name_their_code() {
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaErrorCode as C;
        let too_big = ConnectorError::Kafka(KafkaError::MessageProduction(C::MessageSizeTooLarge));
        assert_eq!((too_big.class(), too_big.store_code().as_deref()), (ErrorClass::Data, Some("MessageSizeTooLarge")));
        assert!(ConnectorError::Kafka(KafkaError::MessageProduction(C::BrokerTransportFailure)).retryable());
        assert_eq!(
            ConnectorError::Kafka(KafkaError::MessageProduction(C::TopicAuthorizationFailed)).class(),
            ErrorClass::Config
        );
    }
}
