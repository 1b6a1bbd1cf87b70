//! The status policy: a pure function of a product's stock and reference stock.
//!
//! - `empty` when the stock is 0;
//! - `danger` when the stock is below `danger_percent` % of the reference
//!   stock (default 10 %, as the receipts simulator alerts), or below
//!   `danger_floor` units (default 0: no floor), whichever is higher;
//! - `safe` otherwise.

use crate::model::Status;

/// When a product is in danger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusPolicy {
    /// Danger under this percentage of the reference stock.
    pub danger_percent: u32,
    /// Danger under this many units, whatever the reference.
    pub danger_floor: i64,
}

impl Default for StatusPolicy {
    fn default() -> Self {
        StatusPolicy { danger_percent: 10, danger_floor: 0 }
    }
}

impl StatusPolicy {
    /// The stock under which a product whose reference stock is `reference` is in danger.
    pub fn threshold(&self, reference: i64) -> i64 {
        // ceil(reference * percent / 100) without floating point: stock < threshold.
        let by_ratio = (reference.max(0) * i64::from(self.danger_percent) + 99) / 100;
        by_ratio.max(self.danger_floor)
    }

    /// The status of a product holding `stock` units.
    pub fn status(&self, stock: i64, reference: i64) -> Status {
        if stock <= 0 {
            Status::Empty
        } else if stock < self.threshold(reference) {
            Status::Danger
        } else {
            Status::Safe
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        let policy = StatusPolicy::default();
        assert_eq!(policy.status(0, 100), Status::Empty);
        assert_eq!(policy.status(9, 100), Status::Danger);
        assert_eq!(policy.status(10, 100), Status::Safe);
        assert_eq!(policy.status(1, 5), Status::Safe, "10 % of 5 rounds up to 1");
        assert_eq!(policy.status(1, 0), Status::Safe);
        let floor = StatusPolicy { danger_percent: 10, danger_floor: 5 };
        assert_eq!(floor.status(4, 10), Status::Danger);
        assert_eq!(floor.status(5, 10), Status::Safe);
    }

    proptest! {
        #[test]
        fn status_is_consistent_with_stock_and_policy(stock in 0i64..10_000, reference in 0i64..10_000, percent in 0u32..=100, floor in 0i64..50) {
            let policy = StatusPolicy { danger_percent: percent, danger_floor: floor };
            let status = policy.status(stock, reference);
            prop_assert_eq!(status == Status::Empty, stock == 0);
            if stock > 0 {
                // danger exactly when stock * 100 < reference * percent, or under the floor
                let below_ratio = stock * 100 < reference * i64::from(percent);
                prop_assert_eq!(status == Status::Danger, below_ratio || stock < floor);
            }
            // more stock never makes the status worse
            let better = policy.status(stock + 1, reference);
            let rank = |s: Status| match s { Status::Empty => 0, Status::Danger => 1, Status::Safe => 2 };
            prop_assert!(rank(better) >= rank(status));
        }
    }
}
