//! Medians, percentiles and spread of repeated measurements.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Summary {
    pub median: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
}

/// Summarises samples given in seconds.
pub fn summarize(samples: &[f64]) -> Summary {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return Summary {
            median: f64::NAN,
            p99: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        };
    }
    Summary {
        median: percentile(&v, 50.0),
        p99: percentile(&v, 99.0),
        min: v[0],
        max: v[v.len() - 1],
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A duration in a readable unit.
pub fn human(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "n/a".into();
    }
    let d = Duration::from_secs_f64(seconds.max(0.0));
    if seconds >= 1.0 {
        format!("{:.2} s", d.as_secs_f64())
    } else if seconds >= 1e-3 {
        format!("{:.2} ms", seconds * 1e3)
    } else {
        format!("{:.1} µs", seconds * 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p99_use_nearest_rank() {
        let s = summarize(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!(s.median, 3.0);
        assert_eq!(s.p99, 5.0);
        assert_eq!((s.min, s.max), (1.0, 5.0));
        let many: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(summarize(&many).p99, 99.0);
        assert!(summarize(&[]).median.is_nan());
    }

    #[test]
    fn human_picks_a_unit() {
        assert_eq!(human(2.5), "2.50 s");
        assert_eq!(human(0.0125), "12.50 ms");
        assert_eq!(human(0.000_004_2), "4.2 µs");
    }
}
