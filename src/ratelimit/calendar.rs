//! Calendar windows for quotas: hours, days and months as they start in one IANA time zone
//! (a day starts at local midnight, so it lasts 23 or 25 hours across a DST change; a month
//! starts on the 1st). Pure functions of an instant, so a boundary is tested at chosen instants.

use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// How long a quota window is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeriodKind {
    Hour,
    Day,
    Month,
}

/// A time zone, loaded once per process, with the window of each kind last computed in it.
struct Zone {
    tz: TimeZone,
    name: &'static str,
    /// Per `PeriodKind`: the last window, packed (start << 22 | length; 0 = none), so the
    /// calendar arithmetic runs once per window, not once per request.
    last: [AtomicU64; 3],
}

/// A quota's window: its kind in a time zone. `Copy` so limits stay plain values; the zone is
/// interned (each distinct zone name is loaded once per process and kept).
#[derive(Clone, Copy)]
pub struct Period {
    pub kind: PeriodKind,
    zone: &'static Zone,
}

impl PartialEq for Period {
    fn eq(&self, other: &Period) -> bool {
        self.kind == other.kind && self.zone.name == other.zone.name
    }
}

impl Eq for Period {}

impl std::fmt::Debug for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}@{}", self.kind, self.zone.name)
    }
}

/// One window: `[start, end)` in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start_s: i64,
    pub end_s: i64,
}

/// Lengths up to 2^22 s (48 days) and starts up to 2^42 s pack into one atomic word.
const LEN_BITS: u32 = 22;

fn pack(w: Window) -> Option<u64> {
    let len = u64::try_from(w.end_s - w.start_s).ok()?;
    let start = u64::try_from(w.start_s).ok()?;
    (len > 0 && len < 1 << LEN_BITS && start < 1 << (64 - LEN_BITS))
        .then_some(start << LEN_BITS | len)
}

fn unpack(v: u64) -> Window {
    let start = (v >> LEN_BITS) as i64;
    Window {
        start_s: start,
        end_s: start + (v & ((1 << LEN_BITS) - 1)) as i64,
    }
}

fn interned(name: &str) -> Result<&'static Zone, String> {
    static ZONES: OnceLock<Mutex<HashMap<String, &'static Zone>>> = OnceLock::new();
    let mut zones = ZONES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(z) = zones.get(name) {
        return Ok(*z);
    }
    let tz = TimeZone::get(name).map_err(|_| {
        format!("unknown time zone `{name}` (an IANA name such as UTC or Europe/Berlin)")
    })?;
    // Bounded: one entry per distinct zone name ever configured (the IANA set is finite).
    let zone: &'static Zone = Box::leak(Box::new(Zone {
        tz,
        name: Box::leak(name.to_string().into_boxed_str()),
        last: Default::default(),
    }));
    zones.insert(name.to_string(), zone);
    Ok(zone)
}

impl Period {
    pub fn new(kind: PeriodKind, zone: &str) -> Result<Period, String> {
        Ok(Period {
            kind,
            zone: interned(zone)?,
        })
    }

    pub fn zone_name(&self) -> &'static str {
        self.zone.name
    }

    /// The nominal length advertised in `RateLimit-Policy` (`w`): an hour, a day, 30 days.
    pub fn nominal_s(&self) -> u64 {
        match self.kind {
            PeriodKind::Hour => 3_600,
            PeriodKind::Day => 86_400,
            PeriodKind::Month => 30 * 86_400,
        }
    }

    /// The window holding the instant `now_s` (Unix seconds): the last one computed when it
    /// still holds it.
    pub fn window_at(&self, now_s: i64) -> Window {
        let last = &self.zone.last[self.kind as usize];
        let cached = last.load(Ordering::Relaxed);
        if cached != 0 {
            let w = unpack(cached);
            if (w.start_s..w.end_s).contains(&now_s) {
                return w;
            }
        }
        let w = self.compute_or_fixed(now_s);
        if let Some(v) = pack(w) {
            last.store(v, Ordering::Relaxed);
        }
        w
    }

    fn compute_or_fixed(&self, now_s: i64) -> Window {
        self.compute(now_s).unwrap_or_else(|| {
            // Outside jiff's range (year ±9999): fixed windows in UTC seconds.
            let len = self.nominal_s() as i64;
            let start = now_s.div_euclid(len) * len;
            Window {
                start_s: start,
                end_s: start + len,
            }
        })
    }

    fn compute(&self, now_s: i64) -> Option<Window> {
        let now = Timestamp::from_second(now_s)
            .ok()?
            .to_zoned_datetime(self.zone.tz.clone());
        let (start, end) = match self.kind {
            PeriodKind::Hour => {
                // Local hour starts (zones with :30 and :45 offsets included).
                let start = now
                    .with()
                    .minute(0)
                    .second(0)
                    .subsec_nanosecond(0)
                    .build()
                    .ok()?;
                let start = if start.timestamp() > now.timestamp() {
                    // A gap made the local hour start later than now: one hour back.
                    start.checked_sub(1.hour()).ok()?
                } else {
                    start
                };
                let end = start.checked_add(1.hour()).ok()?;
                (start, end)
            }
            PeriodKind::Day => {
                let start = now.start_of_day().ok()?;
                let end = now.tomorrow().ok()?.start_of_day().ok()?;
                (start, end)
            }
            PeriodKind::Month => {
                let first = now.first_of_month().ok()?;
                let start = first.start_of_day().ok()?;
                let end = first.checked_add(1.month()).ok()?.start_of_day().ok()?;
                (start, end)
            }
        };
        Some(Window {
            start_s: start.timestamp().as_second(),
            end_s: end.timestamp().as_second(),
        })
    }
}

/// The wall clock in Unix microseconds (quotas count calendar windows, so not the monotonic
/// clock the other limits use).
pub fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_second()
    }

    #[test]
    fn months_start_on_the_first_at_local_midnight() {
        let p = Period::new(PeriodKind::Month, "Europe/Berlin").unwrap();
        // 23:30 UTC on 31 January is already 1 February in Berlin (UTC+1).
        let w = p.window_at(at("2027-01-31T23:30:00Z"));
        assert_eq!(w.start_s, at("2027-01-31T23:00:00Z"));
        assert_eq!(w.end_s, at("2027-02-28T23:00:00Z"));
        let before = p.window_at(at("2027-01-31T22:59:59Z"));
        assert_eq!(before.end_s, w.start_s);
        // March has a DST change: the window ends at midnight CEST (UTC+2).
        let march = p.window_at(at("2027-03-15T12:00:00Z"));
        assert_eq!(march.end_s, at("2027-03-31T22:00:00Z"));
        let utc = Period::new(PeriodKind::Month, "UTC").unwrap();
        assert_eq!(
            utc.window_at(at("2027-01-31T23:30:00Z")).end_s,
            at("2027-02-01T00:00:00Z")
        );
    }

    #[test]
    fn days_follow_dst_and_hours_follow_half_hour_zones() {
        let p = Period::new(PeriodKind::Day, "America/New_York").unwrap();
        // 2027-03-14 is the spring-forward day: 23 hours long.
        let w = p.window_at(at("2027-03-14T12:00:00Z"));
        assert_eq!(w.end_s - w.start_s, 23 * 3600);
        assert_eq!(w.start_s, at("2027-03-14T05:00:00Z"));
        let h = Period::new(PeriodKind::Hour, "Asia/Kolkata").unwrap();
        let w = h.window_at(at("2027-01-01T10:10:00Z"));
        assert_eq!(w.start_s, at("2027-01-01T09:30:00Z"));
        assert_eq!(w.end_s - w.start_s, 3600);
        assert!(Period::new(PeriodKind::Day, "Mars/Olympus").is_err());
        // The remembered window is used only while it holds the instant (back and forth).
        let d = Period::new(PeriodKind::Day, "Europe/Paris").unwrap();
        for s in [
            "2027-06-01T12:00:00Z",
            "2027-06-02T12:00:00Z",
            "2027-06-01T21:59:59Z",
        ] {
            assert_eq!(d.window_at(at(s)), d.compute_or_fixed(at(s)), "{s}");
        }
        assert_eq!(unpack(pack(w).unwrap()), w);
        assert_eq!(
            Period::new(PeriodKind::Day, "UTC").unwrap(),
            Period::new(PeriodKind::Day, "UTC").unwrap()
        );
    }
}
