//! The wire enums as the core's domain types, and back: the one place each mapping is written.

use tollgate_core::rate_limit::bucket::Period;

use crate::v1;

impl From<Period> for v1::Period {
    fn from(period: Period) -> Self {
        match period {
            Period::Second => v1::Period::Second,
            Period::Minute => v1::Period::Minute,
            Period::Hour => v1::Period::Hour,
            Period::Day => v1::Period::Day,
        }
    }
}

/// A wire period that names no period (`PERIOD_UNSPECIFIED`, also what an unknown value reads
/// as).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnspecifiedPeriod;

impl TryFrom<v1::Period> for Period {
    type Error = UnspecifiedPeriod;

    fn try_from(period: v1::Period) -> Result<Self, Self::Error> {
        match period {
            v1::Period::Second => Ok(Period::Second),
            v1::Period::Minute => Ok(Period::Minute),
            v1::Period::Hour => Ok(Period::Hour),
            v1::Period::Day => Ok(Period::Day),
            v1::Period::Unspecified => Err(UnspecifiedPeriod),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_period_round_trips_and_unspecified_is_refused() {
        for period in [Period::Second, Period::Minute, Period::Hour, Period::Day] {
            assert_eq!(Period::try_from(v1::Period::from(period)), Ok(period));
        }
        assert_eq!(Period::try_from(v1::Period::Unspecified), Err(UnspecifiedPeriod));
        // Each to its own wire value (two swapped arms would still round-trip).
        let wire: Vec<i32> = [Period::Second, Period::Minute, Period::Hour, Period::Day]
            .map(|p| v1::Period::from(p) as i32)
            .to_vec();
        assert_eq!(wire, [1, 2, 3, 4]);
    }
}
