//! What a long stage says as it goes. On a terminal the stages draw progress bars; without
//! one (CI, a log file, a Slurm job) bars are invisible, so they print one line per finished
//! unit (an epoch, a fine-tune run) with its figures and the time left instead.

use std::io::IsTerminal;

use crate::EpochRecord;

/// What [`crate::fit`] reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// For every optimiser step: the step (from 1), the steps of the whole fit, the loss.
    /// Reported when the loss is read back ([`crate::LossReadback`]): after each step on
    /// the CPU, a few steps at a time on a GPU; always in order, before the epoch's event.
    Step {
        step: usize,
        total: usize,
        loss: f32,
    },
    /// After every epoch's validation; `epochs` is how many the fit has.
    Epoch {
        record: &'a EpochRecord,
        epochs: usize,
    },
}

/// Whether progress bars can be seen: stderr, where they are drawn, is a terminal.
pub fn bars_visible() -> bool {
    std::io::stderr().is_terminal()
}

/// Seconds as a person reads them: `42 s`, `3 min 05 s`, `1 h 02 min`.
pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s < 60 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        format!("{} h {:02} min", s / 3600, (s % 3600) / 60)
    }
}

/// Time left when `done` of `total` units took `elapsed` seconds, at that pace.
pub fn time_left(elapsed: f64, done: usize, total: usize) -> f64 {
    if done == 0 {
        return 0.0;
    }
    elapsed / done as f64 * total.saturating_sub(done) as f64
}

/// `epoch 3/20: loss 1.2345, val 45.6 %, 12.3 s; about 3 min 40 s left`; `elapsed` is the
/// time since the first epoch began, so the time left counts validation too.
pub fn epoch_line(record: &EpochRecord, epochs: usize, elapsed: f64) -> String {
    let done = record.epoch + 1;
    let val = match record.val_accuracy {
        Some(acc) => format!("val {:.1} %", 100.0 * acc),
        None => "no val (final protocol)".to_owned(),
    };
    format!(
        "epoch {done}/{epochs}: loss {:.4}, {val}, {:.1} s; about {} left",
        record.train_loss,
        record.seconds,
        duration(time_left(elapsed, done, epochs))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_person_writes_them() {
        assert_eq!(duration(0.4), "0 s");
        assert_eq!(duration(59.4), "59 s");
        assert_eq!(duration(185.0), "3 min 05 s");
        assert_eq!(duration(3725.0), "1 h 02 min");
        assert_eq!(duration(-3.0), "0 s");
    }

    #[test]
    fn time_left_keeps_the_pace_so_far() {
        assert_eq!(time_left(30.0, 3, 10), 70.0);
        assert_eq!(time_left(30.0, 10, 10), 0.0);
        assert_eq!(time_left(0.0, 0, 10), 0.0);
    }

    #[test]
    fn an_epoch_line_has_its_figures_and_the_time_left() {
        let r = EpochRecord {
            epoch: 2,
            train_loss: 1.23456,
            val_accuracy: Some(0.456),
            lr: 1e-3,
            seconds: 12.34,
        };
        assert_eq!(
            epoch_line(&r, 20, 36.0),
            "epoch 3/20: loss 1.2346, val 45.6 %, 12.3 s; about 3 min 24 s left"
        );
        let r = EpochRecord {
            val_accuracy: None,
            ..r
        };
        assert_eq!(
            epoch_line(&r, 20, 36.0),
            "epoch 3/20: loss 1.2346, no val (final protocol), 12.3 s; about 3 min 24 s left"
        );
    }
}
