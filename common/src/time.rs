//! Conversions between wall-clock time, durations and their protobuf forms.
//!
//! The controller keeps instants as microseconds since the Unix epoch (`i64`,
//! 8 bytes per field in memory); the API carries `google.protobuf.Timestamp`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, SecondsFormat, Utc};

/// Microseconds since the Unix epoch.
pub type Micros = i64;

pub fn now_micros() -> Micros {
    system_time_to_micros(SystemTime::now())
}

pub fn system_time_to_micros(time: SystemTime) -> Micros {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_micros()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// The instant `micros` after the epoch (the epoch itself for a negative
/// value).
pub fn micros_to_system_time(micros: Micros) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

pub fn micros_to_timestamp(micros: Micros) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

/// `None` for the zero value, which the store uses for "not set".
pub fn micros_to_timestamp_opt(micros: Micros) -> Option<prost_types::Timestamp> {
    (micros != 0).then(|| micros_to_timestamp(micros))
}

pub fn timestamp_to_micros(timestamp: &prost_types::Timestamp) -> Micros {
    timestamp
        .seconds
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(timestamp.nanos) / 1_000)
}

pub fn timestamp_opt_to_micros(timestamp: Option<&prost_types::Timestamp>) -> Micros {
    timestamp.map_or(0, timestamp_to_micros)
}

pub fn duration_to_proto(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: duration.subsec_nanos() as i32,
    }
}

/// Negative protobuf durations become zero.
pub fn duration_from_proto(duration: &prost_types::Duration) -> Duration {
    if duration.seconds < 0 || duration.nanos < 0 {
        return Duration::ZERO;
    }
    Duration::new(duration.seconds as u64, duration.nanos as u32)
}

pub fn micros_to_datetime(micros: Micros) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

/// RFC 3339 in UTC with second precision, or `-` when unset.
pub fn format_micros(micros: Micros) -> String {
    if micros == 0 {
        return "-".to_string();
    }
    micros_to_datetime(micros).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A duration as users read it: `850ms`, `12.4s`, `3m05s`, `2h07m`.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1_000 {
        return format!("{millis}ms");
    }
    let secs = duration.as_secs();
    if secs < 60 {
        return format!("{:.1}s", duration.as_secs_f64());
    }
    if secs < 3_600 {
        return format!("{}m{:02}s", secs / 60, secs % 60);
    }
    format!("{}h{:02}m", secs / 3_600, (secs % 3_600) / 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_round_trip_through_timestamps() {
        for micros in [0, 1, 1_700_000_000_123_456, -1_500_000] {
            assert_eq!(timestamp_to_micros(&micros_to_timestamp(micros)), micros);
        }
        assert!(micros_to_timestamp_opt(0).is_none());
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(format_duration(Duration::from_millis(12_400)), "12.4s");
        assert_eq!(format_duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(format_duration(Duration::from_secs(7_620)), "2h07m");
        let proto = duration_to_proto(Duration::from_millis(1_500));
        assert_eq!(duration_from_proto(&proto), Duration::from_millis(1_500));
    }
}
