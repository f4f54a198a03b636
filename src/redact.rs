//! Connection strings are printed in logs and `check` output; their passwords never are.

/// `scheme://user:secret@host/db` → `scheme://user:***@host/db`.
pub fn url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hides_only_the_password() {
        assert_eq!(
            super::url("postgres://u:pw@h:1/db"),
            "postgres://u:***@h:1/db"
        );
        assert_eq!(super::url("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(super::url("mysql://root@h/db"), "mysql://root@h/db");
    }
}
