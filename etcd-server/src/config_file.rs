//! `--config-file` / `ETCD_CONFIG_FILE`: etcd's YAML configuration file
//! (`etcd.conf.yml.sample`), turned into the command line it stands for.
//!
//! As in etcd, the file replaces the command line and the environment
//! entirely (etcd logs "Other configuration command line flags and
//! environment variables will be ignored if provided"). Its keys are flag
//! names; lists (`log-outputs: [stderr]`, `cipher-suites: [...]`) become
//! comma-separated values; `client-transport-security` and
//! `peer-transport-security` hold `cert-file`, `key-file`,
//! `client-cert-auth`, `trusted-ca-file` and `auto-tls` (peer: the
//! `--peer-` flags); a key without a value keeps the flag's default.
//!
//! ```yaml
//! name: infra0
//! listen-client-urls: https://10.0.1.10:2379
//! client-transport-security:
//!   cert-file: /etc/etcd/server.pem     # becomes --cert-file=/etc/etcd/server.pem
//! log-outputs: [stderr]                 # becomes --log-outputs=stderr
//! ```
//!
//! A key naming an etcd flag this server lacks is refused like the flag
//! itself, unless its value is etcd's default (the sample file lists
//! `proxy: 'off'`, `max-wals: 5` ...): [`crate::config::unsupported_default`].

use std::ffi::OsString;
use yaml_rust2::{Yaml, YamlLoader};

/// The command-line arguments (without the program name) that the YAML
/// file at `path` stands for.
pub fn args(path: &str) -> Result<Vec<OsString>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--config-file {path}: cannot read: {e}"))?;
    args_from_str(&text).map_err(|e| format!("--config-file {path}: {e}"))
}

/// [`args`] of YAML text.
pub fn args_from_str(text: &str) -> Result<Vec<OsString>, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
    let Some(doc) = docs.into_iter().next() else {
        return Ok(Vec::new());
    };
    let map = match doc {
        Yaml::Hash(h) => h,
        Yaml::Null => return Ok(Vec::new()),
        _ => return Err("the top level must be a map of flag names to values".into()),
    };
    let mut out = Vec::new();
    for (k, v) in map {
        let key = key_name(&k)?;
        match key.as_str() {
            "config-file" => return Err("config-file cannot be set in a config file".into()),
            "client-transport-security" | "peer-transport-security" => {
                let prefix = if key.starts_with("peer") { "peer-" } else { "" };
                transport_security(&key, prefix, v, &mut out)?;
            }
            _ => push(&key, &v, &mut out)?,
        }
    }
    Ok(out)
}

fn key_name(k: &Yaml) -> Result<String, String> {
    match k {
        Yaml::String(s) => Ok(s.clone()),
        other => Err(format!("key {other:?} is not a string")),
    }
}

fn transport_security(
    key: &str,
    prefix: &str,
    v: Yaml,
    out: &mut Vec<OsString>,
) -> Result<(), String> {
    let map = match v {
        Yaml::Hash(h) => h,
        Yaml::Null => return Ok(()),
        _ => return Err(format!("{key} must be a map")),
    };
    for (k, v) in map {
        let name = key_name(&k)?;
        let flag = match name.as_str() {
            "cert-file" | "key-file" | "client-cert-auth" | "trusted-ca-file" | "auto-tls" => {
                format!("{prefix}{name}")
            }
            other => return Err(format!("{key}: unknown key {other:?}")),
        };
        push(&flag, &v, out)?;
    }
    Ok(())
}

/// Appends `--flag=value` (nothing for a key without a value).
fn push(flag: &str, v: &Yaml, out: &mut Vec<OsString>) -> Result<(), String> {
    let Some(value) = scalar(v).map_err(|e| format!("{flag}: {e}"))? else {
        return Ok(());
    };
    out.push(OsString::from(format!("--{flag}={value}")));
    Ok(())
}

/// A value as the command line would spell it; None for no value.
fn scalar(v: &Yaml) -> Result<Option<String>, String> {
    Ok(Some(match v {
        Yaml::Null => return Ok(None),
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        Yaml::Array(items) => items
            .iter()
            .map(|i| scalar(i).map(Option::unwrap_or_default))
            .collect::<Result<Vec<_>, _>>()?
            .join(","),
        other => return Err(format!("unsupported value {other:?}")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(a: Vec<OsString>) -> Vec<String> {
        a.into_iter().map(|s| s.into_string().unwrap()).collect()
    }

    #[test]
    fn keys_become_flags() {
        let yaml = "name: 'infra0'\ndata-dir:\nheartbeat-interval: 100\n\
                    strict-reconfig-check: false\nlog-outputs: [stderr]\n\
                    cipher-suites: [\n  A,\n  B\n]\nauto-compaction-retention: \"1\"\n\
                    client-transport-security:\n  cert-file: /c.pem\n  client-cert-auth: true\n\
                    peer-transport-security:\n  trusted-ca-file: /ca.pem\n  auto-tls: false\n";
        assert_eq!(
            strs(args_from_str(yaml).unwrap()),
            [
                "--name=infra0",
                "--heartbeat-interval=100",
                "--strict-reconfig-check=false",
                "--log-outputs=stderr",
                "--cipher-suites=A,B",
                "--auto-compaction-retention=1",
                "--cert-file=/c.pem",
                "--client-cert-auth=true",
                "--peer-trusted-ca-file=/ca.pem",
                "--peer-auto-tls=false",
            ]
        );
    }

    #[test]
    fn bad_files_say_why() {
        assert!(args_from_str("- a\n- b\n").unwrap_err().contains("map"));
        assert!(args_from_str("config-file: x\n").is_err());
        assert!(args_from_str("client-transport-security:\n  nope: 1\n")
            .unwrap_err()
            .contains("nope"));
        assert!(args_from_str("name: [unclosed\n")
            .unwrap_err()
            .contains("YAML"));
    }
}
