//! A route's comparison results: counts, per field how often the candidate differed from the
//! primary and how often two primaries differed from each other (noise), and the last differing
//! samples. A field is *reported* only when its candidate rate stands out of its noise rate
//! (the method of Twitter's Diffy): above it by `absolute` percentage points and by `relative`
//! of it. Memory is bounded: at most [`MAX_FIELDS`] fields are tracked, `samples` samples kept.

use serde::Serialize;
use std::collections::{BTreeSet, HashMap, VecDeque};

/// Fields tracked per route; differences in further fields are only counted.
pub const MAX_FIELDS: usize = 256;
/// Bytes of each body kept in a sample.
pub const SAMPLE_BODY_BYTES: usize = 512;

#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Percentage points.
    pub absolute: f64,
    /// Percent of the noise rate.
    pub relative: f64,
}

#[derive(Debug, Default, Clone, Copy)]
struct FieldCounts {
    candidate: u64,
    noise: u64,
}

/// One differing exchange as kept: refcounted parts only (nothing is copied or formatted until
/// the report is read), masked — no request headers at all; bodies are cut when shown.
#[derive(Debug, Clone)]
pub struct Kept {
    pub request_id: http::HeaderValue,
    pub method: http::Method,
    pub uri: http::Uri,
    pub fields: Vec<String>,
    pub primary_status: u16,
    pub candidate_status: u16,
    pub primary_body: Option<bytes::Bytes>,
    pub candidate_body: Option<bytes::Bytes>,
}

/// A kept exchange as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub request_id: String,
    pub method: String,
    pub path: String,
    pub fields: Vec<String>,
    pub primary_status: u16,
    pub candidate_status: u16,
    pub primary_body: String,
    pub candidate_body: String,
}

impl Kept {
    fn show(&self) -> Sample {
        Sample {
            request_id: self.request_id.to_str().unwrap_or("").to_string(),
            method: self.method.to_string(),
            path: self.uri.path().to_string(),
            fields: self.fields.clone(),
            primary_status: self.primary_status,
            candidate_status: self.candidate_status,
            primary_body: sample_body(self.primary_body.as_ref()),
            candidate_body: sample_body(self.candidate_body.as_ref()),
        }
    }
}

#[derive(Debug, Default)]
pub struct Report {
    compared: u64,
    equal: u64,
    differing: u64,
    noise_compared: u64,
    noise_differing: u64,
    /// Compared requests for which no second primary target was available.
    noise_unavailable: u64,
    fields: HashMap<String, FieldCounts>,
    untracked_differences: u64,
    samples: VecDeque<Kept>,
}

/// A reported field, with its rates in percent.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Reported {
    pub field: String,
    pub candidate_percent: f64,
    pub noise_percent: f64,
    pub candidate: u64,
    pub noise: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub compared: u64,
    pub equal: u64,
    pub differing: u64,
    pub noise_compared: u64,
    pub noise_differing: u64,
    /// False when no compared request had a second primary target: the reported fields are
    /// then raw differences, not noise-cancelled.
    pub noise_cancelling: bool,
    pub reported: Vec<Reported>,
    /// Every tracked field with its counts (reported or not), most differing first.
    pub fields: Vec<Reported>,
    pub untracked_differences: u64,
    pub samples: Vec<Sample>,
}

impl Report {
    /// One compared exchange: the fields the candidate differed in and, when a second primary
    /// answered too, the fields the two primaries differed in.
    pub fn record(
        &mut self,
        candidate: BTreeSet<String>,
        noise: Option<&BTreeSet<String>>,
        sample: impl FnOnce(Vec<String>) -> Kept,
        keep_samples: usize,
    ) {
        self.compared += 1;
        if candidate.is_empty() {
            self.equal += 1;
        } else {
            self.differing += 1;
        }
        match noise {
            Some(n) => {
                self.noise_compared += 1;
                if !n.is_empty() {
                    self.noise_differing += 1;
                }
                for f in n {
                    self.count(f, |c| c.noise += 1);
                }
            }
            None => self.noise_unavailable += 1,
        }
        for f in &candidate {
            self.count(f, |c| c.candidate += 1);
        }
        if !candidate.is_empty() && keep_samples > 0 {
            if self.samples.len() >= keep_samples {
                self.samples.pop_front();
            }
            self.samples
                .push_back(sample(candidate.into_iter().collect()));
        }
    }

    fn count(&mut self, field: &str, add: impl FnOnce(&mut FieldCounts)) {
        if let Some(c) = self.fields.get_mut(field) {
            add(c);
        } else if self.fields.len() < MAX_FIELDS {
            add(self.fields.entry(field.to_string()).or_default());
        } else {
            self.untracked_differences += 1;
        }
    }

    pub fn compared(&self) -> (u64, u64, u64) {
        (self.compared, self.equal, self.differing)
    }

    fn rates(&self, c: FieldCounts) -> (f64, f64) {
        let pct = |n: u64, of: u64| {
            if of == 0 {
                0.0
            } else {
                100.0 * n as f64 / of as f64
            }
        };
        (
            pct(c.candidate, self.compared),
            pct(c.noise, self.noise_compared),
        )
    }

    /// The fields whose candidate rate stands out of their noise rate.
    pub fn reported(&self, t: Thresholds) -> Vec<Reported> {
        self.all_fields()
            .into_iter()
            .filter(|r| {
                r.candidate_percent - r.noise_percent > t.absolute
                    && r.candidate_percent > r.noise_percent * (1.0 + t.relative / 100.0)
            })
            .collect()
    }

    fn all_fields(&self) -> Vec<Reported> {
        let mut all: Vec<Reported> = self
            .fields
            .iter()
            .map(|(f, c)| {
                let (candidate_percent, noise_percent) = self.rates(*c);
                Reported {
                    field: f.clone(),
                    candidate_percent,
                    noise_percent,
                    candidate: c.candidate,
                    noise: c.noise,
                }
            })
            .collect();
        all.sort_by(|a, b| b.candidate.cmp(&a.candidate).then(a.field.cmp(&b.field)));
        all
    }

    pub fn summary(&self, t: Thresholds) -> Summary {
        Summary {
            compared: self.compared,
            equal: self.equal,
            differing: self.differing,
            noise_compared: self.noise_compared,
            noise_differing: self.noise_differing,
            noise_cancelling: self.noise_compared > 0,
            reported: self.reported(t),
            fields: self.all_fields(),
            untracked_differences: self.untracked_differences,
            samples: self.samples.iter().map(Kept::show).collect(),
        }
    }
}

/// What a sample keeps of a body: a copy of its start (one byte more than is shown, to know it
/// was cut), never a reference that would keep the whole body alive.
pub fn sample_start(b: &bytes::Bytes) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(&b[..b.len().min(SAMPLE_BODY_BYTES + 1)])
}

/// The start of a body for a sample, as text.
pub fn sample_body(b: Option<&bytes::Bytes>) -> String {
    match b {
        None => "(not kept: larger than max_compare_bytes)".into(),
        Some(b) => {
            let cut = &b[..b.len().min(SAMPLE_BODY_BYTES)];
            let mut s = String::from_utf8_lossy(cut).into_owned();
            if b.len() > SAMPLE_BODY_BYTES {
                s.push('…');
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(fields: &[&str]) -> BTreeSet<String> {
        fields.iter().map(|s| s.to_string()).collect()
    }

    fn sample(fields: Vec<String>) -> Kept {
        Kept {
            request_id: http::HeaderValue::from_static("r"),
            method: http::Method::GET,
            uri: http::Uri::from_static("/"),
            fields,
            primary_status: 200,
            candidate_status: 200,
            primary_body: None,
            candidate_body: Some(bytes::Bytes::from_static(b"{}")),
        }
    }

    const T: Thresholds = Thresholds {
        absolute: 1.0,
        relative: 20.0,
    };

    #[test]
    fn a_field_that_differs_between_primaries_too_is_noise() {
        let mut r = Report::default();
        for i in 0..1000 {
            let mut cand = set(&["$.ts"]);
            if i % 50 == 0 {
                cand.insert("$.price".into());
            }
            let noise = (i % 10 == 0).then(|| set(&["$.ts"]));
            r.record(cand, noise.as_ref(), sample, 5);
        }
        let reported = r.reported(T);
        assert_eq!(reported.len(), 1, "{reported:?}");
        assert_eq!(reported[0].field, "$.price");
        assert!((reported[0].candidate_percent - 2.0).abs() < 1e-9);
        assert_eq!(r.summary(T).samples.len(), 5);
        assert_eq!(r.compared(), (1000, 0, 1000));
    }

    #[test]
    fn without_a_second_primary_raw_differences_are_reported() {
        let mut r = Report::default();
        for _ in 0..10 {
            r.record(set(&["$.ts"]), None, sample, 0);
        }
        let s = r.summary(T);
        assert!(!s.noise_cancelling);
        assert_eq!(s.reported[0].field, "$.ts");
        assert!(s.samples.is_empty());
    }

    #[test]
    fn tracked_fields_are_bounded() {
        let mut r = Report::default();
        let many: BTreeSet<String> = (0..MAX_FIELDS + 10).map(|i| format!("$.f{i}")).collect();
        r.record(many, None, sample, 1);
        assert_eq!(r.fields.len(), MAX_FIELDS);
        assert_eq!(r.untracked_differences, 10);
    }
}
