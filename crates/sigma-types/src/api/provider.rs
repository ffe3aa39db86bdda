//! Providers: the hosting companies VPS are rented from.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{MAX_NOTES_LEN, opt, opt2, provider_name};
use crate::patch::{double_option, non_null};
use crate::validate::{self as v, FieldErrors, Normalize};

/// A hosting provider VPS are rented from.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Provider {
    /// Stable id.
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// ISO 3166-1 alpha-2 country of the provider.
    pub country: Option<String>,
    /// Website.
    pub website: Option<String>,
    /// Free notes.
    pub notes: Option<String>,
    /// How many VPS (not deleted) are rented from it.
    pub vps_count: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    /// Created at.
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    /// Last changed at.
    pub updated_at: OffsetDateTime,
}

/// Creates a provider.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderCreate {
    /// Unique name.
    pub name: String,
    /// ISO 3166-1 alpha-2 country.
    #[serde(default)]
    pub country: Option<String>,
    /// Website (http or https URL).
    #[serde(default)]
    pub website: Option<String>,
    /// Free notes.
    #[serde(default)]
    pub notes: Option<String>,
}

impl Normalize for ProviderCreate {
    fn normalize(self) -> Result<Self, FieldErrors> {
        let mut e = FieldErrors::new();
        let name = e.check("name", provider_name(&self.name));
        let country = opt(self.country, "country", &mut e, v::country);
        let website = opt(self.website, "website", &mut e, v::url);
        let notes = opt(self.notes, "notes", &mut e, |s| v::text(s, MAX_NOTES_LEN));
        e.into_result()?;
        Ok(ProviderCreate {
            name: name.unwrap_or_default(),
            country,
            website,
            notes,
        })
    }
}

/// Changes a provider: absent fields stay, `null` clears.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderPatch {
    /// New name.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub name: Option<Option<String>>,
    /// New country, or `null`.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub country: Option<Option<String>>,
    /// New website, or `null`.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub website: Option<Option<String>>,
    /// New notes, or `null`.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub notes: Option<Option<String>>,
}

impl Normalize for ProviderPatch {
    fn normalize(self) -> Result<Self, FieldErrors> {
        let mut e = FieldErrors::new();
        let name = non_null(self.name, "name", &mut e)
            .and_then(|s| e.check("name", provider_name(&s)))
            .map(Some);
        let country = opt2(self.country, "country", &mut e, v::country);
        let website = opt2(self.website, "website", &mut e, v::url);
        let notes = opt2(self.notes, "notes", &mut e, |s| v::text(s, MAX_NOTES_LEN));
        e.into_result()?;
        Ok(ProviderPatch {
            name,
            country,
            website,
            notes,
        })
    }
}
