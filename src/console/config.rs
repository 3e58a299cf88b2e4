//! `[console]`: where the hub serves its console, `/metrics` and JSON API,
//! and the token that guards them.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::settings::Checker;

/// `[console]` (docs/console.md).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// `HOST:PORT` to serve on (`--http`); unset: no console. Only a
    /// loopback address (127.0.0.1, ::1, localhost) may go without a token.
    pub http: Option<String>,
    /// File holding the token that browsers and scrapers must present
    /// (`--http-token-file`, mode 0600); required for any other address.
    pub token_file: Option<PathBuf>,
}

impl ConsoleConfig {
    /// The addresses `http` names, and whether all are on this machine only.
    pub fn addresses(&self) -> Option<Result<Vec<SocketAddr>, String>> {
        let http = self.http.as_ref()?;
        Some(match http.to_socket_addrs() {
            Ok(addresses) => Ok(addresses.collect()),
            Err(e) => Err(e.to_string()),
        })
    }

    pub fn check(&self, check: &mut Checker) {
        let Some(addresses) = self.addresses() else {
            if let Some(token_file) = &self.token_file {
                check.fail("console", "token_file", &format!("{token_file:?}"), "a token guards the console: set [console] http (--http HOST:PORT) too, or leave the token out");
            }
            return;
        };
        let http = self.http.as_deref().unwrap_or_default();
        match addresses {
            Err(e) => check.fail("console", "http", &format!("{http:?}"), &format!("use HOST:PORT, e.g. 127.0.0.1:8080 ({e})")),
            Ok(addresses) if addresses.iter().any(|a| !a.ip().is_loopback()) && self.token_file.is_none() => check.fail(
                "console",
                "http",
                &format!("{http:?}"),
                "the console would be open to the network without a token: give it one with --http-token-file FILE \
                 ([console] token_file; make one with `head -c 24 /dev/urandom | base64 > FILE; chmod 600 FILE`), or serve on 127.0.0.1",
            ),
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::ConfigOrigin;

    fn problems(config: &ConsoleConfig) -> String {
        let mut origin = ConfigOrigin::default();
        origin.set_by_named_flag("console", "http", "http");
        let mut check = Checker::new(&origin);
        config.check(&mut check);
        check.finish().err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn only_loopback_goes_without_a_token() {
        let http = |a: &str| ConsoleConfig { http: Some(a.into()), token_file: None };
        assert_eq!(problems(&http("127.0.0.1:8080")), "");
        assert_eq!(problems(&http("localhost:8080")), "");
        assert_eq!(problems(&http("[::1]:8080")), "");
        let open = problems(&http("0.0.0.0:8080"));
        assert!(open.contains("[console] http = \"0.0.0.0:8080\" (set by the flag --http)") && open.contains("--http-token-file"), "{open}");
        assert_eq!(problems(&ConsoleConfig { token_file: Some("t".into()), ..http("0.0.0.0:8080") }), "");
        assert!(problems(&http("8080")).contains("use HOST:PORT"));
        assert!(problems(&ConsoleConfig { http: None, token_file: Some("t".into()) }).contains("token_file"));
    }
}
