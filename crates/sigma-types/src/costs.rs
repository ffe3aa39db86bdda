//! Exchange rates and the monthly cost summary (issue 20), computed exactly.
//!
//! Every VPS's price per billing cycle is converted with the rate an operator entered for its
//! currency into the reporting currency, and normalised to a month. The sum is carried exactly
//! in `i128` in units of 10^-12 / 12 of the reporting currency (cost 10^-4 × rate 10^-8, times
//! 12 / months of the cycle); the one rounding is the final division to 4 decimals, half to
//! even. A VPS whose currency has no rate into the reporting currency, or whose cycle cannot
//! be normalised, is listed in `excluded` with the reason, never estimated.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::money::{self, Amount, Rate, div_round_half_even};
use crate::{BillingCycle, FieldErrors, Normalize};

/// An operator's exchange rate: 1 `from` = `rate` `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExchangeRate {
    /// ISO 4217 code converted from.
    pub from: String,
    /// ISO 4217 code converted to.
    pub to: String,
    /// How many `to` one `from` is worth (decimal string, at most 8 decimals).
    #[schema(value_type = String, example = "0.9234")]
    pub rate: Rate,
    /// When it was last set.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

/// Body of `PUT /api/exchange-rates/{from}/{to}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExchangeRateSet {
    /// How many `to` one `from` is worth (decimal string, more than 0, at most 8 decimals).
    #[schema(value_type = String, example = "0.9234")]
    pub rate: Rate,
}

impl Normalize for ExchangeRateSet {
    fn normalize(self) -> Result<Self, FieldErrors> {
        let mut e = FieldErrors::new();
        if self.rate.raw() == 0 {
            e.add("rate", "must be more than 0");
        }
        e.into_result()?;
        Ok(self)
    }
}

/// Checks the currency pair of an exchange-rate path, naming `from` / `to`.
pub fn currency_pair(from: &str, to: &str) -> Result<(String, String), FieldErrors> {
    let mut e = FieldErrors::new();
    let f = e.check("from", money::currency(from));
    let t = e.check("to", money::currency(to));
    if let (Some(f), Some(t)) = (&f, &t)
        && f == t
    {
        e.add("to", "is the same currency as from (its rate is 1)");
    }
    e.into_result()?;
    Ok((f.unwrap_or_default(), t.unwrap_or_default()))
}

/// What the cost summary is grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CostGroupBy {
    /// Provider name.
    Provider,
    /// Purpose.
    Purpose,
    /// Country.
    Country,
    /// The currency each VPS is priced in.
    Currency,
}

/// Query of `GET /api/costs/summary`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CostQuery {
    /// `provider`, `purpose`, `country` or `currency`.
    #[param(inline)]
    pub group_by: CostGroupBy,
    /// ISO 4217 reporting currency.
    pub currency: String,
}

/// The contract facts of one VPS the summary needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostRow {
    /// VPS id.
    pub id: Uuid,
    /// Hostname.
    pub hostname: String,
    /// Provider name.
    pub provider: Option<String>,
    /// Purpose.
    pub purpose: String,
    /// Country.
    pub country: Option<String>,
    /// Price per billing cycle.
    pub cost: Amount,
    /// Its currency.
    pub currency: String,
    /// Its billing cycle.
    pub billing_cycle: Option<BillingCycle>,
}

/// One group of the summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CostGroup {
    /// The provider, purpose, country or currency; `null` for VPS without one.
    pub key: Option<String>,
    /// VPS counted in this group.
    pub vps_count: i64,
    /// Their monthly cost in the reporting currency (4 decimals, rounded half to even once).
    #[schema(value_type = String)]
    pub monthly: Amount,
}

/// Why a priced VPS is not in the totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExcludedReason {
    /// No exchange rate from its currency into the reporting currency.
    NoRate,
    /// No billing cycle recorded, so no month to normalise to.
    NoBillingCycle,
    /// Billing cycle `other`.
    OtherBillingCycle,
}

/// A priced VPS left out of the totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExcludedVps {
    /// VPS id.
    pub id: Uuid,
    /// Hostname.
    pub hostname: String,
    /// Its price per billing cycle.
    #[schema(value_type = String)]
    pub cost: Amount,
    /// Its currency.
    pub currency: String,
    /// Why it is left out.
    pub reason: ExcludedReason,
}

/// Answer of `GET /api/costs/summary`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CostSummary {
    /// The reporting currency.
    pub currency: String,
    /// What the groups are.
    pub group_by: CostGroupBy,
    /// Groups, by key (`null` last).
    pub groups: Vec<CostGroup>,
    /// Monthly cost of every counted VPS (the exact sum, rounded once).
    #[schema(value_type = String)]
    pub monthly_total: Amount,
    /// VPS counted.
    pub vps_counted: i64,
    /// Live VPS (provisioning, active, retiring) without a recorded cost.
    pub vps_without_cost: i64,
    /// Priced VPS left out, with the reason.
    pub excluded: Vec<ExcludedVps>,
}

/// Scale of the exact sums: 10^-12 / 12 of the reporting currency.
fn to_amount(sum: i128) -> Amount {
    // sum / 12 is in 10^-12; an Amount counts 10^-4: divide by 12 * 10^8 once.
    let raw = div_round_half_even(sum, 12 * 100_000_000);
    Amount::from_raw(i64::try_from(raw).unwrap_or(i64::MAX)).unwrap_or_else(|| {
        // Beyond MAX_UNITS a month: not a fleet this summary is for; saturate visibly.
        Amount::from_raw(money::MAX_UNITS * Amount::ONE).unwrap_or_default()
    })
}

/// The summary of `rows` in `currency`, with `rates` (from, to) → rate.
pub fn summarize(
    rows: &[CostRow],
    rates: &BTreeMap<(String, String), Rate>,
    currency: &str,
    group_by: CostGroupBy,
    vps_without_cost: i64,
) -> CostSummary {
    let one = Rate::from_raw(Rate::ONE).unwrap_or_default();
    let mut groups: BTreeMap<Option<String>, (i64, i128)> = BTreeMap::new();
    let mut excluded = Vec::new();
    let mut total: i128 = 0;
    let mut counted = 0;
    for r in rows {
        let rate = if r.currency == currency {
            Some(one)
        } else {
            rates
                .get(&(r.currency.clone(), currency.to_string()))
                .copied()
        };
        let reason = match (rate, r.billing_cycle) {
            (None, _) => Some(ExcludedReason::NoRate),
            (_, None) => Some(ExcludedReason::NoBillingCycle),
            (_, Some(BillingCycle::Other)) => Some(ExcludedReason::OtherBillingCycle),
            _ => None,
        };
        let (Some(rate), Some(months), None) =
            (rate, r.billing_cycle.and_then(BillingCycle::months), reason)
        else {
            excluded.push(ExcludedVps {
                id: r.id,
                hostname: r.hostname.clone(),
                cost: r.cost,
                currency: r.currency.clone(),
                reason: reason.unwrap_or(ExcludedReason::OtherBillingCycle),
            });
            continue;
        };
        let v = i128::from(r.cost.raw()) * i128::from(rate.raw()) * i128::from(12 / months);
        let key = match group_by {
            CostGroupBy::Provider => r.provider.clone(),
            CostGroupBy::Purpose => Some(r.purpose.clone()),
            CostGroupBy::Country => r.country.clone(),
            CostGroupBy::Currency => Some(r.currency.clone()),
        };
        let g = groups.entry(key).or_default();
        g.0 += 1;
        g.1 += v;
        total += v;
        counted += 1;
    }
    let mut groups: Vec<CostGroup> = groups
        .into_iter()
        .map(|(key, (n, sum))| CostGroup {
            key,
            vps_count: n,
            monthly: to_amount(sum),
        })
        .collect();
    // BTreeMap puts None first; people read the unknown group last.
    groups.sort_by(|a, b| (a.key.is_none(), &a.key).cmp(&(b.key.is_none(), &b.key)));
    excluded.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    CostSummary {
        currency: currency.to_string(),
        group_by,
        groups,
        monthly_total: to_amount(total),
        vps_counted: counted,
        vps_without_cost,
        excluded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        h: &str,
        provider: Option<&str>,
        cost: &str,
        cur: &str,
        cycle: Option<BillingCycle>,
    ) -> CostRow {
        CostRow {
            id: Uuid::nil(),
            hostname: h.into(),
            provider: provider.map(str::to_string),
            purpose: "xrayr".into(),
            country: None,
            cost: Amount::parse(cost).unwrap(),
            currency: cur.into(),
            billing_cycle: cycle,
        }
    }

    #[test]
    fn sums_are_exact_and_rounded_once() {
        use BillingCycle::*;
        // Three yearly 10.00 EUR: 3 × 10/12 = 2.5 exactly; rounding each (0.8333) would give 2.4999.
        let rows = vec![
            row("a", Some("p"), "10", "EUR", Some(Yearly)),
            row("b", Some("p"), "10", "EUR", Some(Yearly)),
            row("c", Some("p"), "10", "EUR", Some(Yearly)),
            row("d", Some("q"), "4.99", "USD", Some(Monthly)),
            row("e", None, "30", "EUR", Some(Quarterly)),
            row("f", Some("q"), "5", "GBP", Some(Monthly)),
            row("g", Some("q"), "5", "EUR", Some(Other)),
            row("h", Some("q"), "5", "EUR", None),
        ];
        let rates = BTreeMap::from([(
            ("USD".to_string(), "EUR".to_string()),
            Rate::parse("0.9").unwrap(),
        )]);
        let s = summarize(&rows, &rates, "EUR", CostGroupBy::Provider, 2);
        assert_eq!(s.groups[0].key.as_deref(), Some("p"));
        assert_eq!(s.groups[0].monthly.to_string(), "2.5");
        assert_eq!(s.groups[1].key.as_deref(), Some("q"));
        assert_eq!(s.groups[1].monthly.to_string(), "4.491", "4.99 × 0.9");
        assert_eq!(s.groups[2].key, None, "the unknown group last");
        assert_eq!(s.groups[2].monthly.to_string(), "10");
        assert_eq!(s.monthly_total.to_string(), "16.991");
        assert_eq!(s.vps_counted, 5);
        let why: Vec<(&str, ExcludedReason)> = s
            .excluded
            .iter()
            .map(|e| (e.hostname.as_str(), e.reason))
            .collect();
        assert_eq!(
            why,
            [
                ("f", ExcludedReason::NoRate),
                ("g", ExcludedReason::OtherBillingCycle),
                ("h", ExcludedReason::NoBillingCycle)
            ]
        );
    }

    #[test]
    fn only_the_entered_direction_is_used() {
        let rows = vec![row("a", None, "1", "EUR", Some(BillingCycle::Monthly))];
        let rates = BTreeMap::from([(
            ("USD".to_string(), "EUR".to_string()),
            Rate::parse("0.9").unwrap(),
        )]);
        let s = summarize(&rows, &rates, "USD", CostGroupBy::Currency, 0);
        assert_eq!(s.excluded.len(), 1, "no inverse of USD→EUR is guessed");
        assert_eq!(s.monthly_total.raw(), 0);
    }

    #[test]
    fn final_rounding_is_half_to_even() {
        // 0.0001 yearly = 0.00000833.. a month → 0; 0.0006 yearly = 0.00005 → 0.0000 (half to even)
        let rows = vec![row("a", None, "0.0006", "EUR", Some(BillingCycle::Yearly))];
        let s = summarize(&rows, &BTreeMap::new(), "EUR", CostGroupBy::Currency, 0);
        assert_eq!(s.monthly_total.raw(), 0);
        let rows = vec![row("a", None, "0.0018", "EUR", Some(BillingCycle::Yearly))];
        let s = summarize(&rows, &BTreeMap::new(), "EUR", CostGroupBy::Currency, 0);
        assert_eq!(s.monthly_total.raw(), 2, "0.00015 → 0.0002");
    }

    #[test]
    fn pairs_are_checked() {
        assert_eq!(
            currency_pair("usd", "eur").unwrap(),
            ("USD".into(), "EUR".into())
        );
        assert!(
            currency_pair("USD", "usd")
                .unwrap_err()
                .0
                .contains_key("to")
        );
        assert!(
            currency_pair("XXX", "EUR")
                .unwrap_err()
                .0
                .contains_key("from")
        );
    }
}
