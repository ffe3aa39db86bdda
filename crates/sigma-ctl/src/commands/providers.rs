//! `sigmactl providers …`

use sigma_types::{Provider, ProviderCreate, ProviderPatch};
use time::OffsetDateTime;

use super::Ctx;
use crate::cli::{ProviderCommand, ProviderEditArgs};
use crate::error::Result;
use crate::output::{self, Cell, Details};

fn provider_row(p: &Provider, _: OffsetDateTime) -> Vec<Cell> {
    vec![
        Cell::new(p.name.clone()),
        Cell::opt(p.country.clone()),
        Cell::new(p.vps_count.to_string()),
        Cell::opt(p.website.clone()),
    ]
}

fn provider_details(p: &Provider, _: OffsetDateTime) -> Details {
    let mut d = Details::new();
    d.field("ID", p.id.to_string())
        .field("Name", p.name.clone())
        .field("Country", Cell::opt(p.country.clone()))
        .field("Website", Cell::opt(p.website.clone()))
        .field("Notes", Cell::opt(p.notes.clone()))
        .field("VPS", p.vps_count.to_string())
        .field("Created", output::time(p.created_at))
        .field("Updated", output::time(p.updated_at));
    d
}

fn clearable(v: &Option<String>, clear: bool) -> Option<Option<String>> {
    if clear {
        Some(None)
    } else {
        v.clone().map(Some)
    }
}

/// The `PATCH` body of `providers edit`.
pub fn provider_patch(a: &ProviderEditArgs) -> ProviderPatch {
    ProviderPatch {
        name: a.name.clone().map(Some),
        country: clearable(&a.country, a.clear_country),
        website: clearable(&a.website, a.clear_website),
        notes: clearable(&a.notes, a.clear_notes),
    }
}

/// Runs `sigmactl providers …`.
pub async fn providers(ctx: &mut Ctx<'_>, cmd: ProviderCommand) -> Result<()> {
    match cmd {
        ProviderCommand::List(page) => {
            let ans = ctx.fetch_list(&["api", "providers"], vec![], &page).await?;
            ctx.list(
                &ans,
                "providers",
                &page,
                &["NAME", "COUNTRY", "VPS", "WEBSITE"],
                provider_row,
            )
        }
        ProviderCommand::Show { provider } => {
            let ans = ctx
                .client
                .get(&["api", "providers", &provider], &[])
                .await?;
            ctx.show(&ans, provider_details)
        }
        ProviderCommand::Create {
            name,
            country,
            website,
            notes,
        } => {
            let body = ProviderCreate {
                name,
                country,
                website,
                notes,
            };
            let ans = ctx.client.post(&["api", "providers"], &body).await?;
            ctx.show(&ans, provider_details)
        }
        ProviderCommand::Edit(a) => {
            let ans = ctx
                .client
                .patch(&["api", "providers", &a.provider], &provider_patch(&a))
                .await?;
            ctx.show(&ans, provider_details)
        }
        ProviderCommand::Delete { provider } => {
            ctx.client.delete(&["api", "providers", &provider]).await?;
            ctx.note(&format!("provider {provider} deleted"))
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn provider_patches_send_null_only_for_clear() {
        let Command::Providers(ProviderCommand::Edit(a)) = Cli::try_parse_from([
            "sigmactl",
            "providers",
            "edit",
            "ovh",
            "--clear-website",
            "--notes",
            "cheap",
        ])
        .unwrap()
        .command
        else {
            panic!("not providers edit")
        };
        assert_eq!(
            serde_json::to_value(provider_patch(&a)).unwrap(),
            json!({"website": null, "notes": "cheap"})
        );
    }
}
