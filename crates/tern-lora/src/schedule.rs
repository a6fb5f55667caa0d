//! Learning-rate schedules with warmup, as transformers' `get_*_schedule_with_warmup`
//! define them: the multiplier for optimizer step `s` (counted from 0, so the
//! first update uses `s = 0`) is
//! - warmup (`s < w`): `s / w`;
//! - constant: `1`;
//! - linear: `(T - s) / (T - w)`, reaching 0 at `T` total steps;
//! - cosine: `0.5 · (1 + cos(π · (s - w) / (T - w)))`.
//!
//! Pretraining also schedules the weight decay: [`PretrainSchedule`] is a
//! [`Schedule`] with a constant decay, or BitNet b1.58's [`TwoStage`].

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

// ---------------------------------------------------------------------------
// pretraining schedules (learning rate and weight decay)

/// Learning rate and weight decay for one optimizer step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepHparams {
    pub lr: f32,
    pub weight_decay: f32,
}

/// The BitNet b1.58 two-stage schedule.
///
/// Source: "BitNet b1.58 2B4T Technical Report" (Ma et al., Microsoft,
/// arXiv:2504.12285, section 2.2 "Pre-training") and Microsoft's "The Era of
/// 1-bit LLMs: Training Tips, Code and FAQ" (2024): ternary models tolerate a
/// much higher learning rate early on; the learning rate decays and then drops
/// sharply half-way through training, and the second stage runs with weight
/// decay switched off. tern's parametrization: linear warmup to `peak_lr`,
/// then linear decay that would reach 0 at `total`; at step `drop_at` the
/// rate is multiplied by `drop_ratio` and keeps decaying linearly to 0 at
/// `total`. Weight decay is `weight_decay` before `drop_at` and 0 after. (The
/// report's stage-1 weight decay follows a cosine bump peaking at 0.1; tern
/// keeps it constant.)
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TwoStage {
    pub peak_lr: f32,
    pub warmup: u64,
    pub total: u64,
    /// First step of the second stage (by default `total / 2`).
    pub drop_at: u64,
    /// Learning-rate multiplier applied from `drop_at` on.
    pub drop_ratio: f32,
    pub weight_decay: f32,
}

impl TwoStage {
    /// The schedule with the drop at mid-training.
    pub fn new(peak_lr: f32, warmup: u64, total: u64, drop_ratio: f32, weight_decay: f32) -> Self {
        TwoStage {
            peak_lr,
            warmup,
            total,
            drop_at: total / 2,
            drop_ratio,
            weight_decay,
        }
    }

    pub fn at(&self, s: u64) -> StepHparams {
        let base = Schedule {
            kind: ScheduleKind::Linear,
            base_lr: self.peak_lr,
            warmup: self.warmup,
            total: self.total,
        }
        .lr(s);
        if s < self.drop_at {
            StepHparams {
                lr: base,
                weight_decay: self.weight_decay,
            }
        } else {
            StepHparams {
                lr: base * self.drop_ratio,
                weight_decay: 0.0,
            }
        }
    }
}

/// Learning-rate (and weight-decay) schedule of a pretraining run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PretrainSchedule {
    /// A [`Schedule`] (constant, linear or cosine with warmup) and a constant
    /// weight decay.
    Standard {
        schedule: Schedule,
        weight_decay: f32,
    },
    /// BitNet b1.58's two-stage schedule.
    TwoStage(TwoStage),
}

impl PretrainSchedule {
    /// Hyper-parameters of optimizer step `s` (0-based).
    pub fn at(&self, s: u64) -> StepHparams {
        match self {
            PretrainSchedule::Standard {
                schedule,
                weight_decay,
            } => StepHparams {
                lr: schedule.lr(s),
                weight_decay: *weight_decay,
            },
            PretrainSchedule::TwoStage(t) => t.at(s),
        }
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
