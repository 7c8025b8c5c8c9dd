//! The parameters of `GET /analytics`, parsed and checked. Everything that
//! reaches SQL is either one of the enums below (identifiers come from a
//! whitelist, never from the caller) or a value bound by the client.

use std::collections::BTreeMap;

use chrono::{Duration, NaiveDate};

use crate::http::error::ApiError;

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Number of (deduplicated) events.
    Events,
    /// Distinct users with at least one event (exact; not additive, merged from uniq states).
    ActiveUsers,
    /// Sum of `amount` of purchases, subscriptions and renewals, minus refunds, in currency units.
    Revenue,
    /// Lifecycle stage transitions into the stage.
    Conversions,
}

impl Metric {
    /// Every metric.
    pub const ALL: [Self; 4] = [Self::Events, Self::ActiveUsers, Self::Revenue, Self::Conversions];

    /// Its name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::ActiveUsers => "active_users",
            Self::Revenue => "revenue",
            Self::Conversions => "conversions",
        }
    }

    /// The unit of its values.
    pub fn unit(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::ActiveUsers => "users",
            Self::Revenue => "currency",
            Self::Conversions => "transitions",
        }
    }
}

/// A column data points can be grouped and filtered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dimension {
    /// The user's lifecycle stage at the time of the event.
    LifecycleStage,
    /// The event type (`transaction.purchase_complete`).
    EventType,
    /// The event category (`transaction`).
    EventCategory,
}

impl Dimension {
    /// Every dimension.
    pub const ALL: [Self; 3] = [Self::LifecycleStage, Self::EventType, Self::EventCategory];

    /// Its name in the API, which is also its column in `metrics_daily`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LifecycleStage => "lifecycle_stage",
            Self::EventType => "event_type",
            Self::EventCategory => "event_category",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// The time bucket of a data point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Aggregation {
    /// One point per day.
    Day,
    /// Per ISO week (starting Monday).
    Week,
    /// Per calendar month.
    Month,
    /// One point for the whole range.
    Total,
}

impl Aggregation {
    /// Every aggregation.
    pub const ALL: [Self; 4] = [Self::Day, Self::Week, Self::Month, Self::Total];

    /// Its name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
            Self::Total => "total",
        }
    }
}

/// A checked `GET /analytics` query (without the page: pages share a result).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AnalyticsQuery {
    /// What is measured.
    pub metric: Metric,
    /// Grouping columns, in the order asked.
    pub dimensions: Vec<Dimension>,
    /// Allowed values per dimension (sorted, deduplicated).
    pub filters: BTreeMap<Dimension, Vec<String>>,
    /// First day, inclusive.
    pub from: NaiveDate,
    /// Last day, inclusive.
    pub to: NaiveDate,
    /// Time bucket.
    pub aggregation: Aggregation,
}

/// Which page of the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// 1-based page number.
    pub page: usize,
    /// Data points per page.
    pub page_size: usize,
}

/// Limits of a query.
pub const MAX_RANGE_DAYS: i64 = 1100;
/// Most data points per page.
pub const MAX_PAGE_SIZE: usize = 1000;
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_FILTER_VALUES: usize = 100;
const STAGES: [&str; 5] = ["Acquisition", "Activation", "Retention", "Revenue", "Referral"];

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_field(param, "invalid_parameter", message)
}

fn one_of<T: Copy>(param: &str, value: &str, all: &[T], name: impl Fn(T) -> &'static str) -> Result<T, ApiError> {
    all.iter().copied().find(|x| name(*x) == value).ok_or_else(|| {
        let names: Vec<&str> = all.iter().map(|x| name(*x)).collect();
        bad(param, format!("{param} must be one of {}; got '{value}'", names.join(", ")))
            .with_details(serde_json::json!({ "field": param, "allowed": names }))
    })
}

fn is_value_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Parses `YYYY-MM-DD..YYYY-MM-DD`, `today`, `yesterday` or `last_<N>d` against `today`.
fn date_range(s: &str, today: NaiveDate) -> Result<(NaiveDate, NaiveDate), ApiError> {
    let p = "date_range";
    let (from, to) = match s {
        "today" => (today, today),
        "yesterday" => (today - Duration::days(1), today - Duration::days(1)),
        _ => {
            if let Some(n) = s.strip_prefix("last_").and_then(|r| r.strip_suffix('d')) {
                let n: i64 = n.parse().map_err(|_| bad(p, format!("'{s}': last_<N>d needs a whole number of days")))?;
                if n < 1 {
                    return Err(bad(p, "last_<N>d needs N >= 1"));
                }
                (today - Duration::days(n - 1), today)
            } else if let Some((a, b)) = s.split_once("..") {
                let day = |x: &str| {
                    NaiveDate::parse_from_str(x, "%Y-%m-%d")
                        .map_err(|_| bad(p, format!("'{x}' is not a date (YYYY-MM-DD)")))
                };
                (day(a)?, day(b)?)
            } else {
                return Err(bad(
                    p,
                    format!("'{s}' is not a date range: use YYYY-MM-DD..YYYY-MM-DD, today, yesterday or last_<N>d"),
                ));
            }
        }
    };
    if from > to {
        return Err(bad(p, format!("the range starts ({from}) after it ends ({to})")));
    }
    if (to - from).num_days() + 1 > MAX_RANGE_DAYS {
        return Err(bad(p, format!("the range spans more than {MAX_RANGE_DAYS} days")));
    }
    Ok((from, to))
}

/// Parses `dim:value|value,dim:value`.
fn filters(s: &str) -> Result<BTreeMap<Dimension, Vec<String>>, ApiError> {
    let p = "filters";
    let mut out: BTreeMap<Dimension, Vec<String>> = BTreeMap::new();
    for part in s.split(',').filter(|x| !x.is_empty()) {
        let (dim, values) =
            part.split_once(':').ok_or_else(|| bad(p, format!("'{part}' is not dimension:value[|value...]")))?;
        let dim = Dimension::parse(dim).ok_or_else(|| {
            bad(p, format!("unknown dimension '{dim}' (lifecycle_stage, event_type, event_category)"))
        })?;
        let entry = out.entry(dim).or_default();
        for v in values.split('|') {
            if v.is_empty() || v.len() > 100 || !v.chars().all(is_value_char) {
                return Err(bad(
                    p,
                    format!("'{v}' is not a valid {} value (1-100 of A-Z a-z 0-9 . _ -)", dim.as_str()),
                ));
            }
            if dim == Dimension::LifecycleStage && !STAGES.contains(&v) {
                return Err(bad(p, format!("'{v}' is not a lifecycle stage ({})", STAGES.join(", "))));
            }
            entry.push(v.to_owned());
        }
        entry.sort();
        entry.dedup();
        if entry.len() > MAX_FILTER_VALUES {
            return Err(bad(p, format!("at most {MAX_FILTER_VALUES} values per dimension")));
        }
    }
    Ok(out)
}

fn number(param: &str, s: &str, max: usize) -> Result<usize, ApiError> {
    match s.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(bad(param, format!("{param} must be a whole number from 1 to {max}; got '{s}'"))),
    }
}

/// Parses the query string's pairs; unknown or repeated parameters are errors
/// (a typo must not silently widen a query). `today` anchors relative ranges.
pub fn parse(pairs: &[(String, String)], today: NaiveDate) -> Result<(AnalyticsQuery, Page), ApiError> {
    const KNOWN: [&str; 7] = ["metric", "dimensions", "filters", "date_range", "aggregation", "page", "page_size"];
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (k, v) in pairs {
        let known = KNOWN.iter().find(|x| **x == k).ok_or_else(|| {
            bad(k, format!("unknown parameter '{k}'")).with_details(serde_json::json!({ "field": k, "allowed": KNOWN }))
        })?;
        if seen.insert(known, v).is_some() {
            return Err(bad(k, format!("parameter '{k}' given more than once")));
        }
    }
    let metric = match seen.get("metric") {
        Some(m) => one_of("metric", m, &Metric::ALL, Metric::as_str)?,
        None => {
            return Err(bad("metric", "metric is required").with_details(serde_json::json!({
                "field": "metric", "allowed": Metric::ALL.map(Metric::as_str)
            })));
        }
    };
    let mut dimensions = Vec::new();
    for d in seen.get("dimensions").map(|s| s.split(',').filter(|x| !x.is_empty())).into_iter().flatten() {
        let dim = one_of("dimensions", d, &Dimension::ALL, Dimension::as_str)?;
        if dimensions.contains(&dim) {
            return Err(bad("dimensions", format!("dimension '{d}' given twice")));
        }
        dimensions.push(dim);
    }
    let filters = filters(seen.get("filters").copied().unwrap_or(""))?;
    let (from, to) = date_range(seen.get("date_range").copied().unwrap_or("last_30d"), today)?;
    let aggregation =
        one_of("aggregation", seen.get("aggregation").copied().unwrap_or("day"), &Aggregation::ALL, |a| a.as_str())?;
    let page = Page {
        page: seen.get("page").map_or(Ok(1), |s| number("page", s, 1_000_000))?,
        page_size: seen.get("page_size").map_or(Ok(DEFAULT_PAGE_SIZE), |s| number("page_size", s, MAX_PAGE_SIZE))?,
    };
    Ok((AnalyticsQuery { metric, dimensions, filters, from, to, aggregation }, page))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Result<(AnalyticsQuery, Page), ApiError> {
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(s.as_bytes()).into_owned().collect();
        parse(&pairs, NaiveDate::from_ymd_opt(2026, 11, 23).unwrap_or_default())
    }

    fn field(r: Result<(AnalyticsQuery, Page), ApiError>) -> String {
        match r {
            Err(e) => {
                assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
                e.details["field"].as_str().unwrap_or_default().to_owned()
            }
            Ok(v) => panic!("accepted: {v:?}"),
        }
    }

    #[test]
    fn defaults_apply() -> Result<(), ApiError> {
        let (query, page) = q("metric=events")?;
        assert_eq!(query.dimensions, vec![]);
        assert!(query.filters.is_empty());
        assert_eq!(query.from.to_string(), "2026-10-25");
        assert_eq!(query.to.to_string(), "2026-11-23");
        assert_eq!(query.aggregation, Aggregation::Day);
        assert_eq!(page, Page { page: 1, page_size: 100 });
        Ok(())
    }

    #[test]
    fn everything_parses() -> Result<(), ApiError> {
        let (query, page) = q("metric=active_users&dimensions=lifecycle_stage,event_type\
            &filters=event_category:engagement|transaction,lifecycle_stage:Revenue\
            &date_range=2026-01-01..2026-03-31&aggregation=month&page=2&page_size=50")?;
        assert_eq!(query.metric, Metric::ActiveUsers);
        assert_eq!(query.dimensions, vec![Dimension::LifecycleStage, Dimension::EventType]);
        assert_eq!(query.filters[&Dimension::EventCategory], vec!["engagement", "transaction"]);
        assert_eq!(query.filters[&Dimension::LifecycleStage], vec!["Revenue"]);
        assert_eq!((query.from.to_string(), query.to.to_string()), ("2026-01-01".into(), "2026-03-31".into()));
        assert_eq!(query.aggregation, Aggregation::Month);
        assert_eq!(page, Page { page: 2, page_size: 50 });
        Ok(())
    }

    #[test]
    fn relative_ranges_end_today() -> Result<(), ApiError> {
        assert_eq!(q("metric=events&date_range=today")?.0.from.to_string(), "2026-11-23");
        assert_eq!(q("metric=events&date_range=yesterday")?.0.to.to_string(), "2026-11-22");
        assert_eq!(q("metric=events&date_range=last_7d")?.0.from.to_string(), "2026-11-17");
        Ok(())
    }

    #[test]
    fn each_bad_parameter_is_named() {
        assert_eq!(field(q("")), "metric");
        assert_eq!(field(q("metric=clicks")), "metric");
        assert_eq!(field(q("metric=events&dimensions=country")), "dimensions");
        assert_eq!(field(q("metric=events&dimensions=event_type,event_type")), "dimensions");
        assert_eq!(field(q("metric=events&filters=event_type")), "filters");
        assert_eq!(field(q("metric=events&filters=country:DE")), "filters");
        assert_eq!(field(q("metric=events&filters=lifecycle_stage:Churned")), "filters");
        assert_eq!(field(q("metric=events&filters=event_type:x'%20OR%201=1--")), "filters");
        assert_eq!(field(q("metric=events&date_range=2026-02-30..2026-03-01")), "date_range");
        assert_eq!(field(q("metric=events&date_range=2026-03-01..2026-02-01")), "date_range");
        assert_eq!(field(q("metric=events&date_range=2020-01-01..2026-01-01")), "date_range");
        assert_eq!(field(q("metric=events&date_range=last_0d")), "date_range");
        assert_eq!(field(q("metric=events&date_range=forever")), "date_range");
        assert_eq!(field(q("metric=events&aggregation=hour")), "aggregation");
        assert_eq!(field(q("metric=events&page=0")), "page");
        assert_eq!(field(q("metric=events&page_size=1001")), "page_size");
        assert_eq!(field(q("metric=events&limit=5")), "limit");
        assert_eq!(field(q("metric=events&metric=revenue")), "metric");
    }

    #[test]
    fn filter_values_are_sorted_and_deduplicated() -> Result<(), ApiError> {
        let (query, _) = q("metric=events&filters=event_type:b.x|a.y|b.x")?;
        assert_eq!(query.filters[&Dimension::EventType], vec!["a.y", "b.x"]);
        Ok(())
    }
}
