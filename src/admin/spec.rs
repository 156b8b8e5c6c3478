//! The `admin` section in compiled form.

use crate::config::{Admin, Diag, Located};
use crate::server::listener::{same_socket, ListenerSpec};
use std::net::SocketAddr;

#[derive(Debug, Clone)]
pub struct AdminSpec {
    pub address: SocketAddr,
    /// Line of `admin.address`, for errors that refer to it.
    pub address_line: u32,
    /// When set, every admin call except `/health/*` needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Whether `/dashboard` is served.
    pub dashboard: bool,
}

/// Shortest admin token accepted.
const MIN_TOKEN_CHARS: usize = 16;

pub fn build(
    admin: Option<&Located<Admin>>,
    listeners: &[ListenerSpec],
    diag: &mut Diag,
) -> Option<AdminSpec> {
    let Some(admin) = admin else {
        diag.err(
            0,
            "admin",
            "the admin section is required (admin: { address: IP:port }); it serves health \
             probes, metrics and reload",
        );
        return None;
    };
    let mark = diag.mark();
    let address = match admin.address.parse::<SocketAddr>() {
        Ok(a) => {
            if let Some(l) = listeners.iter().find(|l| same_socket(&a, &l.address)) {
                diag.err(
                    admin.address.line,
                    "admin.address",
                    format!(
                        "the admin API must not share an address with a listener (line {}): \
                         it would expose reload and config to public traffic",
                        l.address_line
                    ),
                );
            }
            Some(a)
        }
        Err(_) => {
            diag.err(
                admin.address.line,
                "admin.address",
                format!("`{}` is not an IP:port address", admin.address.value),
            );
            None
        }
    };
    if let Some(t) = &admin.token {
        if t.len() < MIN_TOKEN_CHARS {
            diag.err(
                admin.line,
                "admin.token",
                format!("must be at least {MIN_TOKEN_CHARS} characters"),
            );
        }
    }
    let spec = AdminSpec {
        address: address?,
        address_line: admin.address.line,
        token: admin.token.as_ref().map(|t| t.0.clone()),
        dashboard: admin.dashboard.unwrap_or(true),
    };
    diag.ok_since(mark, spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str, listener: &str) -> Vec<(u32, String, String)> {
        let listeners = [ListenerSpec {
            name: "l".into(),
            address: listener.parse().unwrap(),
            address_line: 9,
            limits: Default::default(),
            tls: None,
            trusted_proxies: None,
            proxy_protocol: None,
            ip_rules: Vec::new(),
        }];
        crate::config::diag::build_yaml(yaml, |a: &Located<Admin>, diag| {
            build(Some(a), &listeners, diag)
        })
        .err()
        .unwrap_or_default()
    }

    #[test]
    fn admin_must_not_share_a_listener_address() {
        assert_eq!(
            errors("address: 127.0.0.1:9901\n", "127.0.0.1:8080"),
            vec![]
        );
        let e = errors("address: 127.0.0.1:8080\n", "0.0.0.0:8080");
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].0, e[0].1.as_str()), (1, "admin.address"));
        assert!(e[0].2.contains("(line 9)"), "{e:?}");
    }

    #[test]
    fn tokens_and_addresses_are_checked() {
        let e = errors("address: localhost:1\ntoken: short\n", "127.0.0.1:8080");
        assert_eq!(
            e[0],
            (
                1,
                "admin.address".into(),
                "`localhost:1` is not an IP:port address".into()
            )
        );
        assert_eq!(e[1].1, "admin.token");
        assert_eq!(e[1].2, "must be at least 16 characters");
    }

    #[test]
    fn a_missing_admin_section_is_reported_as_itself() {
        let mut diag = Diag::new("t.yaml");
        assert!(build(None, &[], &mut diag).is_none());
        let e = diag.finish("listeners: []\n").unwrap_err().0;
        assert_eq!((e[0].line, e[0].key.as_str()), (0, "admin"));
        assert!(e[0].message.contains("required"), "{e:?}");
    }
}
