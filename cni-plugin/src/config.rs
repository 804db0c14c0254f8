//! The invocation: environment and stdin, first as the runtime sent them
//! ([`RawInvocation`]), then validated into types the rest of the plugin
//! trusts ([`Env`], [`NetConf`]).

use std::{
    collections::BTreeMap,
    ffi::OsString,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use weir_datapath::attach::AttachMode;
use weir_ipam::RangeConfig;

use crate::{
    error::{Error, Result},
    result::{CniResult, Dns},
};

/// Versions of the spec this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest supported version, used where the config names none.
pub const LATEST: &str = "1.1.0";

/// A supported CNI spec version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        Some(match s {
            "0.3.0" => Version::V0_3_0,
            "0.3.1" => Version::V0_3_1,
            "0.4.0" => Version::V0_4_0,
            "1.0.0" => Version::V1_0_0,
            "1.1.0" => Version::V1_1_0,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }

    fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    /// The oldest config version that allows this verb.
    fn minimum(self) -> Version {
        match self {
            Command::Check => Version::V0_4_0,
            Command::Status | Command::Gc => Version::V1_1_0,
            _ => Version::V0_3_0,
        }
    }
}

/// The invocation exactly as received.
#[derive(Debug, Default)]
pub struct RawInvocation {
    pub command: Option<OsString>,
    pub container_id: Option<OsString>,
    pub netns: Option<OsString>,
    pub ifname: Option<OsString>,
    pub args: Option<OsString>,
    pub stdin: Vec<u8>,
}

impl RawInvocation {
    pub fn from_process(stdin: Vec<u8>) -> RawInvocation {
        RawInvocation {
            command: std::env::var_os("CNI_COMMAND"),
            container_id: std::env::var_os("CNI_CONTAINERID"),
            netns: std::env::var_os("CNI_NETNS"),
            ifname: std::env::var_os("CNI_IFNAME"),
            args: std::env::var_os("CNI_ARGS"),
            stdin,
        }
    }

    pub fn command(&self) -> Result<Command> {
        let raw = self
            .command
            .as_ref()
            .ok_or_else(|| Error::env("CNI_COMMAND", "not set"))?;
        let s = raw
            .to_str()
            .ok_or_else(|| Error::env("CNI_COMMAND", "not UTF-8"))?;
        Command::parse(s).ok_or_else(|| {
            Error::env(
                "CNI_COMMAND",
                format!("unknown command {s:?} (ADD, DEL, CHECK, STATUS, GC, VERSION)"),
            )
        })
    }

    /// The `cniVersion` of stdin when it has a supported one: the version
    /// errors are written in.
    pub fn reply_version(&self) -> &'static str {
        #[derive(Deserialize)]
        struct V {
            #[serde(rename = "cniVersion")]
            cni_version: Option<String>,
        }
        serde_json::from_slice::<V>(&self.stdin)
            .ok()
            .and_then(|v| v.cni_version)
            .and_then(|v| Version::parse(&v))
            .map_or(LATEST, Version::as_str)
    }
}

impl RawInvocation {
    /// The config's `logFile`, read leniently: where to log an invocation
    /// whose config did not validate.
    pub fn log_file_hint(&self) -> Option<PathBuf> {
        #[derive(Deserialize)]
        struct L {
            #[serde(rename = "logFile")]
            log_file: Option<String>,
        }
        serde_json::from_slice::<L>(&self.stdin)
            .ok()
            .and_then(|l| l.log_file)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    }
}

/// The validated environment of a verb that acts on one attachment.
#[derive(Debug, Clone)]
pub struct Env {
    pub container_id: String,
    pub ifname: String,
    /// CNI_NETNS; `None` when unset or empty (allowed for DEL only).
    pub netns: Option<PathBuf>,
    pub args: CniArgs,
}

/// What weir uses of CNI_ARGS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    pub infra_container_id: Option<String>,
}

fn env_str(var: &'static str, value: Option<&OsString>) -> Result<Option<String>> {
    match value {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.to_owned()))
            .ok_or_else(|| Error::env(var, "not UTF-8")),
    }
}

/// `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, the spec's rule for container ids (and
/// weir's for network names, which become directory names).
pub fn valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn validate_ifname(s: &str) -> std::result::Result<(), String> {
    if s.is_empty() {
        return Err("is empty".into());
    }
    if s.len() > 15 {
        return Err(format!("{s:?} is longer than 15 characters"));
    }
    if s == "." || s == ".." {
        return Err(format!("{s:?} is not an interface name"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!("{s:?} contains {c:?}"));
    }
    Ok(())
}

/// Parses `K=V;K=V`. Unknown keys fail unless `IgnoreUnknown` is true.
pub fn parse_cni_args(s: &str) -> Result<CniArgs> {
    let mut pairs = BTreeMap::new();
    for part in s.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| Error::env("CNI_ARGS", format!("{part:?} is not KEY=VALUE")))?;
        if k.is_empty() {
            return Err(Error::env("CNI_ARGS", format!("{part:?} has an empty key")));
        }
        pairs.insert(k.to_owned(), v.to_owned());
    }
    let ignore_unknown = match pairs.remove("IgnoreUnknown").as_deref() {
        None => false,
        Some("1") | Some("true") | Some("True") => true,
        Some("0") | Some("false") | Some("False") => false,
        Some(other) => {
            return Err(Error::env(
                "CNI_ARGS",
                format!("IgnoreUnknown={other:?} is not a boolean"),
            ));
        }
    };
    let args = CniArgs {
        pod_namespace: pairs.remove("K8S_POD_NAMESPACE"),
        pod_name: pairs.remove("K8S_POD_NAME"),
        pod_uid: pairs.remove("K8S_POD_UID"),
        infra_container_id: pairs.remove("K8S_POD_INFRA_CONTAINER_ID"),
    };
    if !ignore_unknown && let Some(key) = pairs.keys().next() {
        return Err(Error::env(
            "CNI_ARGS",
            format!("unknown key {key:?} (set IgnoreUnknown=1 to allow it)"),
        ));
    }
    Ok(args)
}

impl Env {
    pub fn from_raw(raw: &RawInvocation, command: Command) -> Result<Env> {
        let container_id = env_str("CNI_CONTAINERID", raw.container_id.as_ref())?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::env("CNI_CONTAINERID", "not set"))?;
        if !valid_identifier(&container_id) {
            return Err(Error::env(
                "CNI_CONTAINERID",
                format!("{container_id:?} does not match [a-zA-Z0-9][a-zA-Z0-9_.-]*"),
            ));
        }
        let ifname = env_str("CNI_IFNAME", raw.ifname.as_ref())?
            .ok_or_else(|| Error::env("CNI_IFNAME", "not set"))?;
        validate_ifname(&ifname).map_err(|r| Error::env("CNI_IFNAME", r))?;
        let netns = env_str("CNI_NETNS", raw.netns.as_ref())?
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        match &netns {
            None if command != Command::Del => {
                return Err(Error::env("CNI_NETNS", "not set"));
            }
            Some(p) if !p.is_absolute() => {
                return Err(Error::env(
                    "CNI_NETNS",
                    format!("{} is not an absolute path", p.display()),
                ));
            }
            _ => {}
        }
        let args = match env_str("CNI_ARGS", raw.args.as_ref())? {
            Some(s) => parse_cni_args(&s)?,
            None => CniArgs::default(),
        };
        Ok(Env {
            container_id,
            ifname,
            netns,
            args,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Off,
    Error,
    Info,
    Debug,
}

/// Defaults of the paths in DESIGN.md.
pub mod defaults {
    pub const PIN_ROOT: &str = weir_datapath::paths::DEFAULT_PIN_ROOT;
    pub const NODE_INFO: &str = weir_datapath::node_info::DEFAULT_PATH;
    pub const IPAM_STATE_DIR: &str = "/var/lib/weir/ipam";
    pub const ENDPOINTS_DIR: &str = weir_datapath::endpoint_info::DEFAULT_DIR;
    pub const LOG_FILE: &str = "/var/log/weir/cni.log";
}

/// One attachment named by `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The network configuration, validated.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub version: Version,
    pub name: String,
    pub mtu: Option<u32>,
    /// `ipam.ranges`; `None` means the node's pod CIDRs.
    pub ranges: Option<Vec<Vec<RangeConfig>>>,
    pub pin_root: PathBuf,
    pub node_info: PathBuf,
    pub ipam_state_dir: PathBuf,
    pub endpoints_dir: PathBuf,
    pub log_file: PathBuf,
    pub log_level: LogLevel,
    pub dns: Dns,
    /// `None`: TCX where the kernel has it, clsact otherwise.
    pub attach_mode: Option<AttachMode>,
    pub prev_result: Option<CniResult>,
    /// `cni.dev/valid-attachments` (GC).
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// The configuration as decoded, before validation.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    cni_version: Option<serde_json::Value>,
    name: Option<serde_json::Value>,
    #[serde(rename = "type")]
    kind: Option<serde_json::Value>,
    mtu: Option<serde_json::Value>,
    ipam: Option<serde_json::Value>,
    pin_root: Option<serde_json::Value>,
    node_info: Option<serde_json::Value>,
    ipam_state_dir: Option<serde_json::Value>,
    endpoints_dir: Option<serde_json::Value>,
    log_file: Option<serde_json::Value>,
    log_level: Option<serde_json::Value>,
    dns: Option<serde_json::Value>,
    attach_mode: Option<serde_json::Value>,
    prev_result: Option<serde_json::Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<serde_json::Value>,
    #[serde(rename = "cni.dev/attachments")]
    attachments: Option<serde_json::Value>,
}

fn typed<T: serde::de::DeserializeOwned>(field: &str, v: serde_json::Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| Error::config(field, e.to_string()))
}

fn string_field(field: &str, v: Option<serde_json::Value>) -> Result<Option<String>> {
    v.map(|v| typed::<String>(field, v)).transpose()
}

fn path_field(field: &str, v: Option<serde_json::Value>, default: &str) -> Result<PathBuf> {
    match string_field(field, v)? {
        None => Ok(PathBuf::from(default)),
        Some(s) if Path::new(&s).is_absolute() && !s.split('/').any(|c| c == "..") => {
            Ok(PathBuf::from(s))
        }
        Some(s) => Err(Error::config(
            field,
            format!("{s:?} must be an absolute path without '..'"),
        )),
    }
}

impl NetConf {
    /// Decodes and validates stdin for `command`.
    pub fn parse(stdin: &[u8], command: Command) -> Result<NetConf> {
        let value: serde_json::Value =
            serde_json::from_slice(stdin).map_err(|e| Error::Decode {
                reason: if stdin.iter().all(u8::is_ascii_whitespace) {
                    "stdin is empty".into()
                } else {
                    e.to_string()
                },
            })?;
        if !value.is_object() {
            return Err(Error::Decode {
                reason: "the configuration is not a JSON object".into(),
            });
        }
        let raw: RawConf = serde_json::from_value(value).map_err(|e| Error::Decode {
            reason: e.to_string(),
        })?;

        let version_str = string_field("cniVersion", raw.cni_version)?
            .ok_or_else(|| Error::config("cniVersion", "is required"))?;
        let version = Version::parse(&version_str).ok_or_else(|| Error::IncompatibleVersion {
            requested: version_str.clone(),
            supported: SUPPORTED_VERSIONS.join(", "),
        })?;
        if version < command.minimum() {
            return Err(Error::VerbNotAllowed {
                verb: command.as_str(),
                version: version_str,
                minimum: command.minimum().as_str(),
            });
        }

        let name =
            string_field("name", raw.name)?.ok_or_else(|| Error::config("name", "is required"))?;
        if !valid_identifier(&name) || name.len() > 128 {
            return Err(Error::config(
                "name",
                format!("{name:?} does not match [a-zA-Z0-9][a-zA-Z0-9_.-]{{0,127}}"),
            ));
        }
        let kind =
            string_field("type", raw.kind)?.ok_or_else(|| Error::config("type", "is required"))?;
        if kind.is_empty() {
            return Err(Error::config("type", "is empty"));
        }

        let mtu = raw.mtu.map(|v| typed::<u32>("mtu", v)).transpose()?;
        if let Some(m) = mtu
            && !(576..=65_535).contains(&m)
        {
            return Err(Error::config("mtu", format!("{m} is outside 576..=65535")));
        }

        let ranges = match raw.ipam {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Object(mut m)) => {
                if let Some((k, v)) = m
                    .iter()
                    .find(|(k, _)| !matches!(k.as_str(), "type" | "ranges"))
                {
                    return Err(Error::UnsupportedField {
                        field: format!("ipam.{k}"),
                        value: v.to_string(),
                        reason: "weir's IPAM knows only ipam.type and ipam.ranges".into(),
                    });
                }
                if let Some(k) = m.remove("type") {
                    let k: String = typed("ipam.type", k)?;
                    if k != "weir" {
                        return Err(Error::UnsupportedField {
                            field: "ipam.type".into(),
                            value: k,
                            reason: "weir allocates addresses itself; omit ipam.type or set it to \"weir\""
                                .into(),
                        });
                    }
                }
                match m.remove("ranges") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(v) => {
                        let r: Vec<Vec<RangeConfig>> = typed("ipam.ranges", v)?;
                        if r.is_empty() {
                            return Err(Error::config("ipam.ranges", "is empty"));
                        }
                        if r.iter().any(Vec::is_empty) {
                            return Err(Error::config("ipam.ranges", "holds an empty range set"));
                        }
                        Some(r)
                    }
                }
            }
            Some(_) => return Err(Error::config("ipam", "is not an object")),
        };
        if let (Some(m), Some(r)) = (mtu, &ranges)
            && m < 1280
            && r.iter().flatten().any(|r| r.subnet.contains(':'))
        {
            return Err(Error::config(
                "mtu",
                format!("{m} is below IPv6's minimum of 1280"),
            ));
        }

        let log_level = match string_field("logLevel", raw.log_level)?.as_deref() {
            None | Some("info") => LogLevel::Info,
            Some("error") => LogLevel::Error,
            Some("debug") => LogLevel::Debug,
            Some("off") | Some("none") => LogLevel::Off,
            Some(other) => {
                return Err(Error::config(
                    "logLevel",
                    format!("{other:?} is not one of off, error, info, debug"),
                ));
            }
        };
        let attach_mode = match string_field("attachMode", raw.attach_mode)? {
            None => None,
            Some(s) => AttachMode::parse(&s).ok_or_else(|| {
                Error::config(
                    "attachMode",
                    format!("{s:?} is not one of auto, tcx, clsact"),
                )
            })?,
        };
        let dns = match raw.dns {
            None | Some(serde_json::Value::Null) => Dns::default(),
            Some(v) => typed("dns", v)?,
        };
        let prev_result = match raw.prev_result {
            None | Some(serde_json::Value::Null) => None,
            // DEL must clean up whatever it is given: it does not need the
            // previous result, so a broken one does not stop it.
            Some(v) if command == Command::Del => CniResult::from_json(v).ok(),
            Some(v) => Some(CniResult::from_json(v).map_err(|r| Error::config("prevResult", r))?),
        };
        let valid_attachments = match raw.valid_attachments.or(raw.attachments) {
            None => None,
            Some(v) => Some(typed::<Vec<Attachment>>("cni.dev/valid-attachments", v)?),
        };
        if command == Command::Gc && valid_attachments.is_none() {
            return Err(Error::config(
                "cni.dev/valid-attachments",
                "GC needs the list of valid attachments",
            ));
        }

        Ok(NetConf {
            version,
            name,
            mtu,
            ranges,
            pin_root: path_field("pinRoot", raw.pin_root, defaults::PIN_ROOT)?,
            node_info: path_field("nodeInfo", raw.node_info, defaults::NODE_INFO)?,
            ipam_state_dir: path_field(
                "ipamStateDir",
                raw.ipam_state_dir,
                defaults::IPAM_STATE_DIR,
            )?,
            endpoints_dir: path_field("endpointsDir", raw.endpoints_dir, defaults::ENDPOINTS_DIR)?,
            log_file: path_field("logFile", raw.log_file, defaults::LOG_FILE)?,
            log_level,
            dns,
            attach_mode,
            prev_result,
            valid_attachments,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args_accept_kubernetes_keys_and_refuse_unknown_ones_unless_told() {
        let a = parse_cni_args(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=u;\
             K8S_POD_INFRA_CONTAINER_ID=abc;FOO=bar",
        )
        .unwrap();
        assert_eq!(a.pod_namespace.as_deref(), Some("default"));
        assert_eq!(a.pod_name.as_deref(), Some("web-0"));
        assert_eq!(a.infra_container_id.as_deref(), Some("abc"));
        assert_eq!(parse_cni_args("FOO=bar").unwrap_err().code(), 4);
        assert_eq!(parse_cni_args("FOO").unwrap_err().code(), 4);
        assert_eq!(parse_cni_args("").unwrap(), CniArgs::default());
    }

    #[test]
    fn identifiers_and_interface_names() {
        assert!(valid_identifier("a"));
        assert!(valid_identifier("0abc_d.e-f"));
        assert!(!valid_identifier(""));
        assert!(!valid_identifier("-a"));
        assert!(!valid_identifier("a/b"));
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("0123456789abcde").is_ok());
        assert!(validate_ifname("0123456789abcdef").is_err());
        assert!(validate_ifname("a b").is_err());
        assert!(validate_ifname("a:b").is_err());
        assert!(validate_ifname("..").is_err());
    }

    #[test]
    fn verbs_are_refused_below_their_version() {
        let conf = |v: &str| format!(r#"{{"cniVersion":"{v}","name":"n","type":"weir"}}"#);
        let e = NetConf::parse(conf("0.3.1").as_bytes(), Command::Check).unwrap_err();
        assert_eq!(e.code(), 1);
        let e = NetConf::parse(conf("1.0.0").as_bytes(), Command::Status).unwrap_err();
        assert_eq!(e.code(), 1);
        assert!(NetConf::parse(conf("1.1.0").as_bytes(), Command::Status).is_ok());
        let e = NetConf::parse(conf("0.2.0").as_bytes(), Command::Add).unwrap_err();
        assert_eq!(e.code(), 1);
    }
}
