//! Keeping secrets out of output: passwords in URLs, Kafka client properties,
//! and the rule every `Debug` of a configuration follows (secrets print as `***`).

/// What a secret prints as.
pub const REDACTED: &str = "***";

/// `url` with its password (and any query string, which may carry tokens)
/// replaced by `***`; a string that is not a URL prints as a placeholder, since
/// it could be anything.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some(REDACTED));
            }
            if u.query().is_some() {
                u.set_query(Some(REDACTED));
            }
            u.to_string()
        }
        Err(_) => "<not a URL>".into(),
    }
}

/// librdkafka properties whose values are shown; any other value (passwords,
/// keys, OAuth secrets, JAAS configs, properties added later) is redacted.
const KAFKA_SHOWN: [&str; 10] = [
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "client.id",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.endpoint.identification.algorithm",
    "client.rack",
];

/// The value of a Kafka client property as it may be shown.
pub fn kafka_property_shown<'v>(name: &str, value: &'v str) -> &'v str {
    if KAFKA_SHOWN.contains(&name) { value } else { REDACTED }
}

/// Kafka client properties as they may be shown, sorted by name.
pub fn kafka_properties_shown<'a>(
    properties: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> std::collections::BTreeMap<&'a str, &'a str> {
    properties.into_iter().map(|(k, v)| (k, kafka_property_shown(k, v))).collect()
}

/// A secret as it may be shown: `***` unless empty (an unset secret is worth seeing).
pub fn shown(secret: &str) -> &str {
    if secret.is_empty() { "" } else { REDACTED }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_query_strings_are_redacted_and_the_rest_kept() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db.internal:5432/lifecycle"),
            "postgres://app:***@db.internal:5432/lifecycle"
        );
        assert_eq!(redact_url("http://127.0.0.1:8123"), "http://127.0.0.1:8123/");
        assert_eq!(redact_url("https://h/x?token=abc"), "https://h/x?***");
        assert_eq!(redact_url("hunter2"), "<not a URL>");
        assert_eq!(kafka_property_shown("sasl.password", "hunter2"), "***");
        assert_eq!(kafka_property_shown("sasl.oauthbearer.client.secret", "x"), "***");
        assert_eq!(kafka_property_shown("security.protocol", "SASL_SSL"), "SASL_SSL");
        assert_eq!((shown(""), shown("s")), ("", "***"));
    }
}
