//! The wall clock, as the crate writes it in log lines and events.

/// Now, RFC 3339 UTC (with the fraction of a second).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
