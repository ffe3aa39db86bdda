//! `sigmactl providers …` and `sigmactl purposes …`

use serde_json::Value;
use sigma_types::{Provider, ProviderCreate, ProviderPatch, Purpose, PurposeCreate, PurposePatch};
use time::OffsetDateTime;

use super::Ctx;
use crate::cli::{MeshArgs, ProviderCommand, ProviderEditArgs, PurposeCommand};
use crate::error::Result;
use crate::input;
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

fn compact(v: &Value, max: usize) -> String {
    let s = v.to_string();
    if s.chars().count() > max {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    } else {
        s
    }
}

fn purpose_row(p: &Purpose, _: OffsetDateTime) -> Vec<Cell> {
    vec![
        Cell::new(p.name.clone()),
        Cell::new(p.display_name.clone()),
        Cell::new(p.vps_count.to_string()),
        Cell::new(compact(&p.mesh, 48)),
    ]
}

fn purpose_details(p: &Purpose, _: OffsetDateTime) -> Details {
    let mut d = Details::new();
    d.field("Name", p.name.clone())
        .field("Display name", p.display_name.clone())
        .field("VPS", p.vps_count.to_string())
        .field(
            "Mesh",
            serde_json::to_string_pretty(&p.mesh).unwrap_or_else(|_| p.mesh.to_string()),
        )
        .field("Created", output::time(p.created_at))
        .field("Updated", output::time(p.updated_at));
    d
}

/// The mesh settings given inline or in a file, if any.
pub fn mesh(a: &MeshArgs) -> Result<Option<Value>> {
    match (&a.mesh, &a.mesh_file) {
        (Some(text), _) => input::parse_inline_json(text, "--mesh").map(Some),
        (None, Some(path)) => input::read_document(path).map(Some),
        (None, None) => Ok(None),
    }
}

/// Runs `sigmactl purposes …`.
pub async fn purposes(ctx: &mut Ctx<'_>, cmd: PurposeCommand) -> Result<()> {
    match cmd {
        PurposeCommand::List(page) => {
            let ans = ctx.fetch_list(&["api", "purposes"], vec![], &page).await?;
            ctx.list(
                &ans,
                "purposes",
                &page,
                &["NAME", "DISPLAY NAME", "VPS", "MESH"],
                purpose_row,
            )
        }
        PurposeCommand::Show { name } => {
            let ans = ctx.client.get(&["api", "purposes", &name], &[]).await?;
            ctx.show(&ans, purpose_details)
        }
        PurposeCommand::Create {
            name,
            display_name,
            mesh: m,
        } => {
            let body = PurposeCreate {
                name,
                display_name,
                mesh: mesh(&m)?,
            };
            let ans = ctx.client.post(&["api", "purposes"], &body).await?;
            ctx.show(&ans, purpose_details)
        }
        PurposeCommand::Edit {
            name,
            display_name,
            mesh: m,
        } => {
            let body = PurposePatch {
                display_name: display_name.map(Some),
                mesh: mesh(&m)?.map(Some),
            };
            let ans = ctx.client.patch(&["api", "purposes", &name], &body).await?;
            ctx.show(&ans, purpose_details)
        }
        PurposeCommand::Delete { name } => {
            ctx.client.delete(&["api", "purposes", &name]).await?;
            ctx.note(&format!("purpose {name} deleted"))
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

    #[test]
    fn long_mesh_settings_are_shortened_in_lists() {
        let v = json!({"k": "x".repeat(100)});
        let s = compact(&v, 20);
        assert_eq!(s.chars().count(), 20);
        assert!(s.ends_with('…'));
        assert_eq!(compact(&json!({}), 20), "{}");
    }
}
