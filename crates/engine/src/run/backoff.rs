//! Exponential backoff with full jitter.

use std::time::Duration;

use flotilla_spec::RetryPolicy;

/// The delay before the attempt after `failed_attempt` (1-based): a uniformly random
/// duration up to `min(max, initial * multiplier^(failed_attempt - 1))`. `unit` is a random
/// number in `[0, 1)`, passed in so that this stays pure.
pub fn retry_delay(policy: &RetryPolicy, failed_attempt: u32, unit: f64) -> Duration {
    let exp = policy
        .multiplier
        .powi(failed_attempt.saturating_sub(1) as i32);
    let ceiling = (policy.initial.0.as_secs_f64() * exp).min(policy.max.0.as_secs_f64());
    Duration::from_secs_f64((ceiling * unit.clamp(0.0, 1.0)).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_spec::Dur;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 5,
            initial: Dur::millis(100),
            max: Dur::millis(350),
            multiplier: 2.0,
        }
    }

    #[test]
    fn grows_then_caps() {
        let p = policy();
        assert_eq!(retry_delay(&p, 1, 1.0), Duration::from_millis(100));
        assert_eq!(retry_delay(&p, 2, 1.0), Duration::from_millis(200));
        assert_eq!(retry_delay(&p, 3, 1.0), Duration::from_millis(350));
        assert_eq!(retry_delay(&p, 9, 1.0), Duration::from_millis(350));
    }

    #[test]
    fn jitter_is_full() {
        let p = policy();
        assert_eq!(retry_delay(&p, 2, 0.0), Duration::ZERO);
        assert_eq!(retry_delay(&p, 2, 0.5), Duration::from_millis(100));
    }
}
