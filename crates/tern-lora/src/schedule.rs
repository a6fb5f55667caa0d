//! Learning-rate schedules with warmup, as transformers' `get_*_schedule_with_warmup`
//! define them: the multiplier for optimizer step `s` (counted from 0, so the
//! first update uses `s = 0`) is
//! - warmup (`s < w`): `s / w`;
//! - constant: `1`;
//! - linear: `(T - s) / (T - w)`, reaching 0 at `T` total steps;
//! - cosine: `0.5 · (1 + cos(π · (s - w) / (T - w)))`.

use std::f64::consts::PI;

/// Shape of the schedule after warmup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleKind {
    Constant,
    Linear,
    Cosine,
}

impl std::str::FromStr for ScheduleKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "constant" => Ok(ScheduleKind::Constant),
            "linear" => Ok(ScheduleKind::Linear),
            "cosine" => Ok(ScheduleKind::Cosine),
            other => Err(format!(
                "unknown LR scheduler {other:?} (expected constant, linear or cosine)"
            )),
        }
    }
}

/// A learning-rate schedule over `total` optimizer steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub base_lr: f32,
    pub warmup: u64,
    pub total: u64,
}

impl Schedule {
    /// Warmup given as a fraction of `total` (rounded up, as transformers'
    /// `warmup_ratio` is).
    pub fn with_ratio(kind: ScheduleKind, base_lr: f32, ratio: f64, total: u64) -> Self {
        let warmup = (ratio * total as f64).ceil() as u64;
        Schedule {
            kind,
            base_lr,
            warmup,
            total,
        }
    }

    /// The learning rate of optimizer step `s` (0-based).
    pub fn lr(&self, s: u64) -> f32 {
        let (w, t) = (self.warmup, self.total.max(1));
        let mult = if s < w {
            s as f64 / w.max(1) as f64
        } else {
            let span = t.saturating_sub(w).max(1) as f64;
            let done = (s - w) as f64;
            match self.kind {
                ScheduleKind::Constant => 1.0,
                ScheduleKind::Linear => ((t as f64 - s as f64) / span).max(0.0),
                ScheduleKind::Cosine => {
                    (0.5 * (1.0 + (PI * (done / span).min(1.0)).cos())).max(0.0)
                }
            }
        };
        (self.base_lr as f64 * mult) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_shapes() {
        let s = |kind| Schedule {
            kind,
            base_lr: 1.0,
            warmup: 4,
            total: 12,
        };
        // Warmup: 0, 1/4, 2/4, 3/4.
        for k in [
            ScheduleKind::Constant,
            ScheduleKind::Linear,
            ScheduleKind::Cosine,
        ] {
            assert_eq!(
                (0..4).map(|i| s(k).lr(i)).collect::<Vec<_>>(),
                vec![0.0, 0.25, 0.5, 0.75]
            );
        }
        assert_eq!(s(ScheduleKind::Constant).lr(11), 1.0);
        assert_eq!(s(ScheduleKind::Linear).lr(4), 1.0);
        assert_eq!(s(ScheduleKind::Linear).lr(8), 0.5);
        assert_eq!(s(ScheduleKind::Linear).lr(12), 0.0);
        assert_eq!(s(ScheduleKind::Cosine).lr(4), 1.0);
        assert!((s(ScheduleKind::Cosine).lr(8) - 0.5).abs() < 1e-7);
        assert!(s(ScheduleKind::Cosine).lr(12).abs() < 1e-7);
        assert_eq!(
            Schedule::with_ratio(ScheduleKind::Cosine, 1.0, 0.1, 95).warmup,
            10
        );
        assert!("warmup".parse::<ScheduleKind>().is_err());
    }
}
