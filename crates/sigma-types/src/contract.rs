//! What was rented and on which terms: the contract and spec fields of a VPS (issue 20).
//!
//! They travel as one nested object, `contract`, in the VPS bodies; every field is optional.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::Date;
use time::macros::format_description;
use utoipa::{IntoParams, ToSchema};

use crate::money::{self, Amount};
use crate::patch::double_option;
use crate::validate as v;
use crate::{FieldErrors, Normalize};

/// How often a VPS is paid for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BillingCycle {
    /// Every month.
    Monthly,
    /// Every three months.
    Quarterly,
    /// Every twelve months.
    Yearly,
    /// Anything else (prepaid blocks, hourly): cannot be normalised to a month.
    Other,
}

impl BillingCycle {
    /// Every cycle.
    pub const ALL: [BillingCycle; 4] = [
        BillingCycle::Monthly,
        BillingCycle::Quarterly,
        BillingCycle::Yearly,
        BillingCycle::Other,
    ];

    /// Stored and JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BillingCycle::Monthly => "monthly",
            BillingCycle::Quarterly => "quarterly",
            BillingCycle::Yearly => "yearly",
            BillingCycle::Other => "other",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<BillingCycle> {
        BillingCycle::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Months one payment covers; `None` for `other`.
    pub fn months(self) -> Option<u32> {
        match self {
            BillingCycle::Monthly => Some(1),
            BillingCycle::Quarterly => Some(3),
            BillingCycle::Yearly => Some(12),
            BillingCycle::Other => None,
        }
    }
}

/// A calendar date, written `YYYY-MM-DD` (years 2000-2100).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub Date);

impl Day {
    /// Parses `YYYY-MM-DD`.
    pub fn parse(s: &str) -> Result<Day, String> {
        let d = Date::parse(s, format_description!("[year]-[month]-[day]"))
            .map_err(|_| format!("{s:?} is not a date written YYYY-MM-DD"))?;
        if !(2000..=2100).contains(&d.year()) {
            return Err(format!("{s:?} is outside the years 2000-2100"));
        }
        Ok(Day(d))
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        write!(
            f,
            "{:04}-{:02}-{:02}",
            d.year(),
            u8::from(d.month()),
            d.day()
        )
    }
}

impl Serialize for Day {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Day {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Day;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a date written YYYY-MM-DD")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Day, E> {
                Day::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// Largest accepted CPU core count.
pub const MAX_CPU_CORES: i64 = 1024;
/// Largest accepted RAM, MiB (16 TiB).
pub const MAX_RAM_MB: i64 = 16 * 1024 * 1024;
/// Largest accepted disk or traffic figure, GB.
pub const MAX_GB: i64 = 1_000_000_000;

/// The contract terms and rented specs of a VPS. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VpsContract {
    /// Price of one billing cycle, an exact decimal string (`"4.99"`, at most 4 decimals).
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "4.99")]
    pub cost: Option<Amount>,
    /// ISO 4217 currency of `cost` (required with it).
    #[serde(default)]
    pub currency: Option<String>,
    /// What `cost` pays for.
    #[serde(default)]
    pub billing_cycle: Option<BillingCycle>,
    /// When it was bought (`YYYY-MM-DD`).
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Date)]
    pub purchased_on: Option<Day>,
    /// Paid until (`YYYY-MM-DD`): the VPS is gone after this day unless renewed.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Date)]
    pub expires_on: Option<Day>,
    /// Whether the provider renews it by itself (default false).
    #[serde(default)]
    pub auto_renew: bool,
    /// CPU cores (1-1024).
    #[serde(default)]
    pub cpu_cores: Option<i64>,
    /// RAM in MiB.
    #[serde(default)]
    pub ram_mb: Option<i64>,
    /// Disk in GB.
    #[serde(default)]
    pub disk_gb: Option<i64>,
    /// Monthly traffic allowance in GB (absent: unknown or unmetered).
    #[serde(default)]
    pub traffic_gb: Option<i64>,
    /// SSH port.
    #[serde(default)]
    pub ssh_port: Option<i64>,
    /// Data-centre name.
    #[serde(default)]
    pub data_center: Option<String>,
}

fn range(field: &str, n: Option<i64>, max: i64, e: &mut FieldErrors) {
    if let Some(n) = n
        && !(1..=max).contains(&n)
    {
        e.add(field, format!("must be 1-{max}"));
    }
}

/// Checks the fields of a contract (prefix `contract.`), returning it canonical.
fn check(c: VpsContract, e: &mut FieldErrors) -> VpsContract {
    let currency = c
        .currency
        .and_then(|s| e.check("contract.currency", money::currency(&s)));
    if c.cost.is_some() && currency.is_none() {
        e.add("contract.currency", "required when a cost is given");
    }
    if let (Some(p), Some(x)) = (c.purchased_on, c.expires_on)
        && x < p
    {
        e.add("contract.expires_on", "is before purchased_on");
    }
    range("contract.cpu_cores", c.cpu_cores, MAX_CPU_CORES, e);
    range("contract.ram_mb", c.ram_mb, MAX_RAM_MB, e);
    range("contract.disk_gb", c.disk_gb, MAX_GB, e);
    range("contract.traffic_gb", c.traffic_gb, MAX_GB, e);
    if let Some(p) = c.ssh_port {
        e.check("contract.ssh_port", v::port(p));
    }
    let data_center = c
        .data_center
        .and_then(|s| e.check("contract.data_center", v::name(&s, crate::MAX_NAME_LEN)));
    VpsContract {
        currency,
        data_center,
        ..c
    }
}

impl Normalize for VpsContract {
    fn normalize(self) -> Result<Self, FieldErrors> {
        let mut e = FieldErrors::new();
        let c = check(self, &mut e);
        e.into_result()?;
        Ok(c)
    }
}

macro_rules! patch_struct {
    ($($(#[$doc:meta])* $f:ident : $t:ty, $schema:ty;)*) => {
        /// Changes contract fields: absent fields stay, `null` clears one.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
        #[serde(deny_unknown_fields)]
        pub struct VpsContractPatch {
            $(
                $(#[$doc])*
                #[serde(default, deserialize_with = "double_option", skip_serializing_if = "Option::is_none")]
                #[schema(value_type = Option<$schema>)]
                pub $f: Option<Option<$t>>,
            )*
        }

        impl VpsContractPatch {
            /// `base` with this patch applied.
            pub fn apply(&self, base: &VpsContract) -> VpsContract {
                let mut c = base.clone();
                $(
                    if let Some(v) = &self.$f {
                        patch_struct!(@set c, $f, v);
                    }
                )*
                c
            }

            /// Whether it changes nothing.
            pub fn is_empty(&self) -> bool {
                true $(&& self.$f.is_none())*
            }
        }
    };
    (@set $c:ident, auto_renew, $v:ident) => { $c.auto_renew = $v.unwrap_or(false) };
    (@set $c:ident, $f:ident, $v:ident) => { $c.$f = $v.clone() };
}

patch_struct! {
    /// Price of one billing cycle (decimal string).
    cost: Amount, String;
    /// ISO 4217 currency.
    currency: String, String;
    /// Billing cycle.
    billing_cycle: BillingCycle, BillingCycle;
    /// Purchase date (`YYYY-MM-DD`).
    #[schema(format = Date)]
    purchased_on: Day, String;
    /// Paid-until date (`YYYY-MM-DD`).
    #[schema(format = Date)]
    expires_on: Day, String;
    /// Renewed by the provider by itself (`null`: false).
    auto_renew: bool, bool;
    /// CPU cores.
    cpu_cores: i64, i64;
    /// RAM in MiB.
    ram_mb: i64, i64;
    /// Disk in GB.
    disk_gb: i64, i64;
    /// Monthly traffic allowance in GB.
    traffic_gb: i64, i64;
    /// SSH port.
    ssh_port: i64, i64;
    /// Data-centre name.
    data_center: String, String;
}

impl VpsContractPatch {
    /// Checks the values this patch sets, each on its own (the rules that tie fields
    /// together need the stored contract: [`Self::apply_checked`]).
    pub fn check_fields(&self) -> Result<(), FieldErrors> {
        let mut e = FieldErrors::new();
        let one = VpsContract {
            currency: self.currency.clone().flatten(),
            cpu_cores: self.cpu_cores.flatten(),
            ram_mb: self.ram_mb.flatten(),
            disk_gb: self.disk_gb.flatten(),
            traffic_gb: self.traffic_gb.flatten(),
            ssh_port: self.ssh_port.flatten(),
            data_center: self.data_center.clone().flatten(),
            ..Default::default()
        };
        check(one, &mut e);
        e.into_result()
    }

    /// `base` with this patch applied and the result checked as a whole (a cost needs a
    /// currency whichever of the two the patch touched), or every problem, named
    /// `contract.<field>`.
    pub fn apply_checked(&self, base: &VpsContract) -> Result<VpsContract, FieldErrors> {
        let mut e = FieldErrors::new();
        let c = check(self.apply(base), &mut e);
        e.into_result()?;
        Ok(c)
    }
}

/// Takes the `contract` member out of a VPS body (a JSON object) and decodes it with
/// `decode`, naming its mistakes `contract.<field>`; absent or `null` is `None`.
pub fn take_contract<T>(
    body: &mut serde_json::Value,
    decode: impl FnOnce(serde_json::Value) -> Result<T, FieldErrors>,
) -> Result<Option<T>, FieldErrors> {
    let Some(map) = body.as_object_mut() else {
        let mut e = FieldErrors::new();
        e.add("body", "expected a JSON object");
        return Err(e);
    };
    match map.remove("contract") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => decode(v).map(Some).map_err(|errs| {
            FieldErrors(
                errs.0
                    .into_iter()
                    .map(|(k, r)| {
                        let k = if k == "body" {
                            "contract".to_string()
                        } else {
                            format!("contract.{k}")
                        };
                        (k, r)
                    })
                    .collect(),
            )
        }),
    }
}

/// The body of `POST /api/enrollment-tokens`: the fields of
/// [`crate::EnrollmentTokenCreate`] plus a `contract` preset for the VPS that enroll with it.
///
/// `contract` is carried beside it rather than in it so that code building an
/// `EnrollmentTokenCreate` literal keeps compiling.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EnrollmentTokenCreateBody {
    /// The token's fields.
    #[serde(flatten)]
    pub create: crate::EnrollmentTokenCreate,
    /// Contract terms and specs given to every VPS that enrolls with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<VpsContract>,
}

impl EnrollmentTokenCreateBody {
    /// Decodes and checks a request body with the caller's strict decoders, naming every
    /// mistake's field; a token bound to a VPS takes no contract preset (no presets at all).
    pub fn from_json_with(
        mut body: serde_json::Value,
        decode_contract: impl FnOnce(serde_json::Value) -> Result<VpsContract, FieldErrors>,
        decode: impl FnOnce(serde_json::Value) -> Result<crate::EnrollmentTokenCreate, FieldErrors>,
    ) -> Result<EnrollmentTokenCreateBody, FieldErrors> {
        let contract = take_contract(&mut body, decode_contract)?;
        let create = decode(body)?;
        let mut e = FieldErrors::new();
        if create.vps_id.is_some() && contract.is_some() {
            e.add(
                "contract",
                "a token bound to a VPS (vps_id) re-enrolls that VPS as it is; presets do not apply",
            );
        }
        let create = create.normalize().map_err(|x| e.0.extend(x.0)).ok();
        let contract = match contract.map(Normalize::normalize).transpose() {
            Ok(c) => c,
            Err(x) => {
                e.0.extend(x.0);
                None
            }
        };
        e.into_result()?;
        Ok(EnrollmentTokenCreateBody {
            create: create.expect("checked above"),
            contract,
        })
    }
}

/// Filters of the VPS list on contract fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContractFilter {
    /// Paid until at most this many days from today (expired ones included).
    pub expires_within_days: Option<i64>,
    /// Priced in this currency.
    pub currency: Option<String>,
    /// Cost per billing cycle at least this.
    pub cost_min: Option<Amount>,
    /// Cost per billing cycle at most this.
    pub cost_max: Option<Amount>,
}

/// Filters and page of `GET /api/vps` and `GET /api/vps/export`: those of
/// [`crate::VpsQuery`] plus the contract filters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VpsListQuery {
    /// Only this status (`deleted` lists deleted VPS; by default they are left out).
    #[param(inline)]
    pub status: Option<crate::VpsStatus>,
    /// Only this purpose.
    pub purpose: Option<String>,
    /// Only this country.
    pub country: Option<String>,
    /// Only this provider (name).
    pub provider: Option<String>,
    /// Only VPS with this tag.
    pub tag: Option<String>,
    /// Exactly this hostname (case-insensitive).
    pub hostname: Option<String>,
    /// Case-insensitive text search in hostname, alias, city and addresses.
    pub q: Option<String>,
    /// Only VPS paid until at most this many days from today (0-3650), those already
    /// expired included.
    pub expires_within_days: Option<i64>,
    /// Only VPS priced in this ISO 4217 currency.
    pub currency: Option<String>,
    /// Only VPS whose cost per billing cycle is at least this (decimal string).
    #[param(value_type = Option<String>)]
    pub cost_min: Option<Amount>,
    /// Only VPS whose cost per billing cycle is at most this (decimal string).
    #[param(value_type = Option<String>)]
    pub cost_max: Option<Amount>,
    /// Page size (1-1000, default 100).
    pub limit: Option<i64>,
    /// Items to skip.
    pub offset: Option<i64>,
}

impl VpsListQuery {
    /// The inventory query and the contract filter, checked; every bad parameter named.
    pub fn checked(self) -> Result<(crate::VpsQuery, ContractFilter), FieldErrors> {
        let mut e = FieldErrors::new();
        if let Some(d) = self.expires_within_days
            && !(0..=3650).contains(&d)
        {
            e.add("expires_within_days", "must be 0-3650");
        }
        let currency = self
            .currency
            .and_then(|c| e.check("currency", money::currency(&c)));
        if let (Some(a), Some(b)) = (self.cost_min, self.cost_max)
            && a > b
        {
            e.add("cost_max", "is less than cost_min");
        }
        let q = crate::VpsQuery {
            status: self.status,
            purpose: self.purpose,
            country: self.country,
            provider: self.provider,
            tag: self.tag,
            hostname: self.hostname,
            q: self.q,
            limit: self.limit,
            offset: self.offset,
        };
        let q = match q.normalize() {
            Ok(q) => Some(q),
            Err(x) => {
                e.0.extend(x.0);
                None
            }
        };
        e.into_result()?;
        Ok((
            q.expect("checked above"),
            ContractFilter {
                expires_within_days: self.expires_within_days,
                currency,
                cost_min: self.cost_min,
                cost_max: self.cost_max,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_contract_is_checked_field_by_field() {
        let c: VpsContract = serde_json::from_value(json!({
            "cost": "4.99", "currency": "eur", "billing_cycle": "monthly",
            "purchased_on": "2026-01-15", "expires_on": "2027-01-15", "ssh_port": 2222,
            "data_center": " FSN1 "
        }))
        .unwrap();
        let c = c.normalize().unwrap();
        assert_eq!(c.currency.as_deref(), Some("EUR"));
        assert_eq!(c.data_center.as_deref(), Some("FSN1"));
        let bad = VpsContract {
            cost: Some(Amount::parse("1").unwrap()),
            purchased_on: Some(Day::parse("2026-02-01").unwrap()),
            expires_on: Some(Day::parse("2026-01-01").unwrap()),
            cpu_cores: Some(0),
            ssh_port: Some(70000),
            ..Default::default()
        };
        let e = bad.normalize().unwrap_err();
        for f in [
            "contract.currency",
            "contract.expires_on",
            "contract.cpu_cores",
            "contract.ssh_port",
        ] {
            assert!(e.0.contains_key(f), "{f} not named in {e:?}");
        }
    }

    #[test]
    fn dates_are_iso_calendar_days() {
        assert_eq!(Day::parse("2026-02-28").unwrap().to_string(), "2026-02-28");
        for bad in [
            "2026-02-30",
            "26-02-01",
            "2026-2-1",
            "1999-12-31",
            "2026-02-01T00:00",
        ] {
            assert!(Day::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_patch_applies_then_checks_the_whole() {
        let base = VpsContract {
            cost: Some(Amount::parse("5").unwrap()),
            currency: Some("EUR".into()),
            auto_renew: true,
            ..Default::default()
        };
        let p: VpsContractPatch =
            serde_json::from_value(json!({"currency": null, "auto_renew": null})).unwrap();
        let e = p.apply_checked(&base).unwrap_err();
        assert!(e.0.contains_key("contract.currency"), "{e:?}");
        let p: VpsContractPatch =
            serde_json::from_value(json!({"cost": null, "currency": null})).unwrap();
        let c = p.apply_checked(&base).unwrap();
        assert_eq!(c.cost, None);
        assert!(c.auto_renew, "absent stays");
        assert!(VpsContractPatch::default().is_empty());
    }

    #[test]
    fn contract_mistakes_are_named_under_contract() {
        let mut body = json!({"hostname": "a", "contract": {"cost": 4.99}});
        let e = take_contract(&mut body, |v| {
            serde_json::from_value::<VpsContract>(v).map_err(|err| {
                let mut e = FieldErrors::new();
                e.add("cost", err.to_string());
                e
            })
        })
        .unwrap_err();
        assert!(e.0.contains_key("contract.cost"), "{e:?}");
        assert!(body.get("contract").is_none(), "taken out of the body");
    }
}
