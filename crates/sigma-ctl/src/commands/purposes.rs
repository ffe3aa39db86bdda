//! `sigmactl purposes …`

use serde_json::Value;
use sigma_types::{Purpose, PurposeCreate, PurposePatch};
use time::OffsetDateTime;

use super::Ctx;
use crate::cli::{MeshArgs, PurposeCommand};
use crate::error::Result;
use crate::input;
use crate::output::{self, Cell, Details};

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
    use serde_json::json;

    use super::*;

    #[test]
    fn long_mesh_settings_are_shortened_in_lists() {
        let v = json!({"k": "x".repeat(100)});
        let s = compact(&v, 20);
        assert_eq!(s.chars().count(), 20);
        assert!(s.ends_with('…'));
        assert_eq!(compact(&json!({}), 20), "{}");
    }
}
