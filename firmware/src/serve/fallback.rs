//! When serving switches from int8 to fp32 and back: the failure window, the cool-down and
//! its doubling when int8 fails again soon after coming back.
//!
//! Pure state with time passed in: the dispatcher calls it with `Instant::now()`, the tests
//! with instants they advance by hand, so a cool-down of minutes is tested in microseconds.
//! Starting and stopping workers (and whether memory allows fp32) stays in the dispatcher.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use edgedx_icd::FallbackReason;

/// The fallback rules, from `[fallback]` in the daemon config.
#[derive(Debug, Clone, Copy)]
pub struct FallbackRules {
    /// Int8 failures within `window` that switch to fp32.
    pub after: usize,
    pub window: Duration,
    /// Time in fp32 before int8 is tried again; doubled each time int8 fails again within
    /// `window` of coming back (or cannot come back), so the device never flaps.
    pub cooldown: Duration,
    pub max_cooldown: Duration,
}

#[derive(Debug)]
pub struct Fallback {
    rules: FallbackRules,
    /// Recent int8 failures, none older than the window.
    failures: VecDeque<Instant>,
    /// Serving fp32 since, and why.
    since: Option<(Instant, FallbackReason)>,
    cooldown: Duration,
    returned_at: Option<Instant>,
}

impl Fallback {
    pub fn new(rules: FallbackRules) -> Fallback {
        Fallback {
            rules,
            failures: VecDeque::new(),
            since: None,
            cooldown: rules.cooldown,
            returned_at: None,
        }
    }

    /// Why fp32 serves, while it does.
    pub fn active(&self) -> Option<FallbackReason> {
        self.since.map(|(_, reason)| reason)
    }

    /// The cool-down the current (or next) fallback lasts.
    pub fn cooldown(&self) -> Duration {
        self.cooldown
    }

    /// An int8 failure at `now`. Returns whether serving should switch to fp32 (enough
    /// failures within the window, and not already on fp32).
    pub fn int8_failed(&mut self, now: Instant) -> bool {
        self.failures.push_back(now);
        self.forget_old(now);
        if self
            .returned_at
            .is_some_and(|t| now.saturating_duration_since(t) < self.rules.window)
        {
            // int8 failed again soon after coming back: wait longer next time.
            self.double_cooldown();
        }
        self.since.is_none() && self.failures.len() >= self.rules.after
    }

    /// fp32 serves from `now` (loaded and ready): the cool-down runs from here.
    pub fn entered(&mut self, reason: FallbackReason, now: Instant) {
        self.since = Some((now, reason));
    }

    /// The switch to fp32 did not happen after all (fp32 could not start).
    pub fn abandoned(&mut self) {
        self.since = None;
    }

    /// Whether it is time to try int8 again.
    pub fn cooldown_due(&self, now: Instant) -> bool {
        self.since
            .is_some_and(|(since, _)| now.saturating_duration_since(since) >= self.cooldown)
    }

    /// int8 serves again from `now`.
    pub fn returned(&mut self, now: Instant) {
        self.since = None;
        self.returned_at = Some(now);
        self.failures.clear();
    }

    /// int8 could not come back at `now`: fp32 goes on for a longer cool-down, from now.
    pub fn return_failed(&mut self, now: Instant) {
        if let Some((_, reason)) = self.since {
            self.since = Some((now, reason));
        }
        self.double_cooldown();
    }

    /// Whether int8 has gone a whole window without failing (an alert may clear).
    pub fn quiet(&mut self, now: Instant) -> bool {
        self.forget_old(now);
        self.failures.is_empty()
    }

    fn forget_old(&mut self, now: Instant) {
        while self
            .failures
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > self.rules.window)
        {
            self.failures.pop_front();
        }
    }

    fn double_cooldown(&mut self) {
        self.cooldown = (self.cooldown * 2).min(self.rules.max_cooldown);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn rules(after: usize) -> FallbackRules {
        FallbackRules {
            after,
            window: 60 * S,
            cooldown: 300 * S,
            max_cooldown: 2400 * S,
        }
    }

    #[test]
    fn enough_failures_within_the_window_switch_to_fp32() {
        let t0 = Instant::now();
        let mut f = Fallback::new(rules(2));
        assert!(!f.int8_failed(t0));
        // The first failure has left the window: this one is alone.
        assert!(!f.int8_failed(t0 + 61 * S));
        assert!(f.int8_failed(t0 + 100 * S), "two within 60 s");
        f.entered(FallbackReason::Hang, t0 + 101 * S);
        assert_eq!(f.active(), Some(FallbackReason::Hang));
        // Already on fp32: more int8 failures (a shadow run, say) switch nothing.
        assert!(!f.int8_failed(t0 + 102 * S));
    }

    #[test]
    fn int8_is_tried_again_after_the_cooldown_from_when_fp32_was_ready() {
        let t0 = Instant::now();
        let mut f = Fallback::new(rules(1));
        assert!(f.int8_failed(t0));
        // fp32 took 20 s to load: the cool-down counts from then.
        f.entered(FallbackReason::Crash, t0 + 20 * S);
        assert!(!f.cooldown_due(t0 + 319 * S));
        assert!(f.cooldown_due(t0 + 320 * S));
        f.returned(t0 + 321 * S);
        assert_eq!(f.active(), None);
        assert!(!f.cooldown_due(t0 + 10_000 * S), "no fallback, nothing due");
    }

    #[test]
    fn int8_failing_soon_after_coming_back_doubles_the_cooldown_up_to_the_cap() {
        let t0 = Instant::now();
        let mut f = Fallback::new(rules(1));
        let mut now = t0;
        let mut seen = Vec::new();
        for _ in 0..5 {
            assert!(f.int8_failed(now));
            f.entered(FallbackReason::Hang, now);
            now += f.cooldown();
            assert!(f.cooldown_due(now));
            f.returned(now);
            now += 10 * S;
            seen.push(f.cooldown().as_secs());
        }
        assert_eq!(seen, [300, 600, 1200, 2400, 2400]);
        // A failure long after coming back is not flapping: the cool-down stays.
        let mut f = Fallback::new(rules(1));
        assert!(f.int8_failed(t0));
        f.entered(FallbackReason::Hang, t0);
        f.returned(t0 + 300 * S);
        assert!(f.int8_failed(t0 + 1000 * S));
        assert_eq!(f.cooldown(), 300 * S);
    }

    #[test]
    fn a_failed_return_restarts_a_longer_cooldown() {
        let t0 = Instant::now();
        let mut f = Fallback::new(rules(1));
        assert!(f.int8_failed(t0));
        f.entered(FallbackReason::LoadFailed, t0);
        f.return_failed(t0 + 300 * S);
        assert_eq!(f.active(), Some(FallbackReason::LoadFailed));
        assert!(
            !f.cooldown_due(t0 + 899 * S),
            "600 s from the failed return"
        );
        assert!(f.cooldown_due(t0 + 900 * S));
    }

    #[test]
    fn an_abandoned_switch_leaves_int8_serving() {
        let t0 = Instant::now();
        let mut f = Fallback::new(rules(1));
        assert!(f.int8_failed(t0));
        f.entered(FallbackReason::Hang, t0);
        f.abandoned();
        assert_eq!(f.active(), None);
        // The failure still counts: the next one switches again.
        assert!(f.int8_failed(t0 + S));
    }

    #[test]
    fn quiet_once_a_whole_window_passes_without_a_failure() {
        let t0 = Instant::now();
        let mut f = Fallback::new(rules(3));
        f.int8_failed(t0);
        f.int8_failed(t0 + 30 * S);
        assert!(!f.quiet(t0 + 60 * S));
        assert!(!f.quiet(t0 + 90 * S));
        assert!(f.quiet(t0 + 91 * S));
    }
}
