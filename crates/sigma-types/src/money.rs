//! Exact money: fixed-scale decimals and ISO 4217 currency codes.
//!
//! Amounts are integers of a fixed fraction of the unit ([`Amount`]: 1/10,000; [`Rate`]:
//! 1/100,000,000), never floats. Why a fixed scale rather than a decimal crate or minor units:
//! - it is stored as a 64-bit integer on both databases (sqlx's `Any` driver has no decimal
//!   type, and `NUMERIC` would read back differently from SQLite and PostgreSQL), so a cost
//!   range filter is an integer comparison in SQL, identical on both;
//! - four decimals hold every ISO 4217 minor unit (0 for JPY, 2 for EUR, 3 for KWD, 4 for CLF)
//!   and the sub-cent prices small providers quote (`0.0045`), where "minor units" would need
//!   a per-currency scale and still refuse those;
//! - sums and products are exact in `i128`; the only rounding anywhere is the one final
//!   division of a monthly-normalised total, done once, half to even (see `costs`).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative decimal with exactly `S` fractional digits, held as an integer count of
/// `10^-S`. Written and read as a JSON string (`"4.99"`), so no JSON number's float parsing
/// ever touches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Fixed<const S: u32>(i64);

/// A price: 4 decimals, at most 1,000,000,000 units.
pub type Amount = Fixed<4>;
/// An exchange rate: 8 decimals, more than 0, at most 1,000,000,000.
pub type Rate = Fixed<8>;

/// The largest whole-unit value of either kind; keeps every product and sum well inside `i128`.
pub const MAX_UNITS: i64 = 1_000_000_000;

impl<const S: u32> Fixed<S> {
    /// `10^S`.
    pub const ONE: i64 = 10_i64.pow(S);

    /// From the stored integer (count of `10^-S`).
    pub fn from_raw(raw: i64) -> Option<Self> {
        (0..=MAX_UNITS * Self::ONE)
            .contains(&raw)
            .then_some(Fixed(raw))
    }

    /// The stored integer (count of `10^-S`).
    pub fn raw(self) -> i64 {
        self.0
    }

    /// Parses `123`, `123.4`, `0.0045` (at most `S` decimals, no sign, no exponent, no
    /// separators): the exact value or why not.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{s:?} is not a decimal such as \"4.99\" (digits, an optional '.', at most {S} decimals, no sign)"
            )
        };
        let (int, frac) = match s.split_once('.') {
            Some((i, f)) => (i, f),
            None => (s, ""),
        };
        if int.is_empty()
            || !int.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
            || (s.contains('.') && frac.is_empty())
        {
            return Err(bad());
        }
        if frac.len() > S as usize {
            return Err(format!("{s:?} has more than {S} decimals"));
        }
        let int = int.trim_start_matches('0');
        if int.len() > 10 {
            return Err(format!("{s:?} is larger than {MAX_UNITS}"));
        }
        let whole: i64 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad())?
        };
        let mut f: i64 = 0;
        for (i, d) in frac.bytes().enumerate() {
            f += i64::from(d - b'0') * 10_i64.pow(S - 1 - i as u32);
        }
        if whole > MAX_UNITS || (whole == MAX_UNITS && f > 0) {
            return Err(format!("{s:?} is larger than {MAX_UNITS}"));
        }
        Ok(Fixed(whole * Self::ONE + f))
    }
}

impl<const S: u32> fmt::Display for Fixed<S> {
    /// The shortest exact spelling: `4.99`, `5`, `0.0045`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / Self::ONE;
        let frac = self.0 % Self::ONE;
        if frac == 0 {
            return write!(f, "{whole}");
        }
        let digits = format!("{frac:0width$}", width = S as usize);
        write!(f, "{whole}.{}", digits.trim_end_matches('0'))
    }
}

impl<const S: u32> Serialize for Fixed<S> {
    fn serialize<Ser: Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
        s.collect_str(self)
    }
}

impl<'de, const S: u32> Deserialize<'de> for Fixed<S> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const S: u32>;
        impl<const S: u32> serde::de::Visitor<'_> for V<S> {
            type Value = Fixed<S>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a decimal string such as \"4.99\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Fixed<S>, E> {
                Fixed::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V::<S>)
    }
}

/// Rounds `num / den` (both non-negative, `den > 0`) to the nearest integer, halves to even.
pub fn div_round_half_even(num: i128, den: i128) -> i128 {
    let q = num / den;
    let r = num % den;
    match (2 * r).cmp(&den) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q & 1),
    }
}

/// The ISO 4217 codes of currencies in circulation (funds, precious metals and testing codes
/// left out: no VPS is priced in them). Sorted, for binary search.
const CURRENCIES: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD",
    "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD",
    "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ",
    "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD",
    "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR",
    "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN",
    "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR",
    "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB",
    "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS",
    "VED", "VES", "VND", "VUV", "WST", "XAF", "XCD", "XCG", "XOF", "XPF", "YER", "ZAR", "ZMW",
    "ZWG", "ZWL",
];

/// An ISO 4217 currency code in circulation, returned upper-cased.
pub fn currency(s: &str) -> Result<String, String> {
    let up = s.trim().to_ascii_uppercase();
    if CURRENCIES.binary_search(&up.as_str()).is_ok() {
        Ok(up)
    } else {
        Err(format!(
            "{s:?} is not an ISO 4217 currency code in circulation (e.g. EUR, USD)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse_and_print_exactly() {
        for (s, raw, back) in [
            ("4.99", 49_900, "4.99"),
            ("5", 50_000, "5"),
            ("05.10", 51_000, "5.1"),
            ("0.0045", 45, "0.0045"),
            ("1000000000", 10_000_000_000_000, "1000000000"),
        ] {
            let a = Amount::parse(s).unwrap();
            assert_eq!(a.raw(), raw, "{s}");
            assert_eq!(a.to_string(), back);
        }
        for bad in [
            "",
            ".5",
            "5.",
            "-1",
            "+1",
            "1e3",
            "1,5",
            "0.00001",
            "1000000000.01",
            " 1",
            "NaN",
            "99999999999999999999",
        ] {
            assert!(Amount::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(Rate::parse("0.00617").unwrap().raw(), 617_000);
    }

    #[test]
    fn json_is_a_string_never_a_float() {
        let a: Amount = serde_json::from_str("\"19.90\"").unwrap();
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"19.9\"");
        assert!(serde_json::from_str::<Amount>("19.9").is_err());
    }

    #[test]
    fn rounding_is_half_to_even() {
        assert_eq!(div_round_half_even(5, 2), 2);
        assert_eq!(div_round_half_even(7, 2), 4);
        assert_eq!(div_round_half_even(10, 3), 3);
        assert_eq!(div_round_half_even(11, 3), 4);
    }

    #[test]
    fn currencies_are_iso_4217() {
        assert!(CURRENCIES.windows(2).all(|w| w[0] < w[1]), "sorted, unique");
        assert_eq!(currency("eur").unwrap(), "EUR");
        assert!(currency("EURO").is_err());
        assert!(currency("XAU").is_err(), "gold is not a price currency");
        assert!(currency("ABC").is_err());
    }
}
