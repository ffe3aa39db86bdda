//! The one-line command that installs sigma-agent on a VPS with an enrollment token, as
//! `sigmactl enroll create` prints it.

/// Shape of the install command. `{script_url}` is sigma-api's URL followed by `/install.sh`
/// (sigma-api serves the install script there), `{api}` is sigma-api's URL as the VPS reach
/// it, and `{token}` is the enrollment token; each is shell-quoted when it needs to be. The
/// script reads `SIGMA_API_URL` and `SIGMA_ENROLLMENT_TOKEN`, installs sigma-agent, and lets
/// it enroll.
pub const INSTALL_COMMAND: &str =
    "curl -fsSL {script_url} | SIGMA_API_URL={api} SIGMA_ENROLLMENT_TOKEN={token} sh";

/// Path of the install script under sigma-api's URL.
pub const INSTALL_SCRIPT_PATH: &str = "/install.sh";

/// Quotes a word for a POSIX shell, leaving it bare when it only holds safe characters.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-+=/:.,@%".contains(&b));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The install command for sigma-api at `api_url` and `token`.
pub fn install_command(api_url: &str, token: &str) -> String {
    let api = api_url.trim_end_matches('/');
    INSTALL_COMMAND
        .replace(
            "{script_url}",
            &shell_quote(&format!("{api}{INSTALL_SCRIPT_PATH}")),
        )
        .replace("{api}", &shell_quote(api))
        .replace("{token}", &shell_quote(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_has_the_documented_shape() {
        assert_eq!(
            install_command("https://sigma.example.net/", "sge_abcd1234_secret"),
            "curl -fsSL https://sigma.example.net/install.sh | \
             SIGMA_API_URL=https://sigma.example.net SIGMA_ENROLLMENT_TOKEN=sge_abcd1234_secret sh"
        );
    }

    #[test]
    fn odd_characters_are_quoted() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        let c = install_command("http://h:1/x y", "t;rm -rf /");
        assert!(c.contains("SIGMA_ENROLLMENT_TOKEN='t;rm -rf /' sh"), "{c}");
        assert!(
            c.starts_with("curl -fsSL 'http://h:1/x y/install.sh' | "),
            "{c}"
        );
    }
}
