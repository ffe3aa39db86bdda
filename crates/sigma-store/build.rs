//! `sqlx::migrate!` embeds the migration files at compile time, but on stable Rust cargo does
//! not know it read them: without this a new migration file left a built sigma-api without it
//! until something else in the crate changed (sqlx's documented remedy, as `sqlx migrate
//! build-script` writes it).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
