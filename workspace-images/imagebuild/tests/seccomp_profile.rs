//! The shipped workspace seccomp profile is Docker's default plus the Chromium sandbox rules.

use imagebuild::seccomp::{DOCKER_DEFAULT_PROFILE, WORKSPACE_PROFILE, workspace_security_opts};
use serde_json::Value;

const CLONE_NEWNS: u64 = 0x0002_0000;
const CLONE_NEWCGROUP: u64 = 0x0200_0000;
const CLONE_NEWUTS: u64 = 0x0400_0000;
const CLONE_NEWIPC: u64 = 0x0800_0000;
const CLONE_NEWUSER: u64 = 0x1000_0000;
const CLONE_NEWPID: u64 = 0x2000_0000;
const CLONE_NEWNET: u64 = 0x4000_0000;

fn syscalls(profile: &str) -> Vec<Value> {
    let value: Value = serde_json::from_str(profile).unwrap();
    value["syscalls"].as_array().unwrap().clone()
}

fn added_rules() -> Vec<Value> {
    let default = syscalls(DOCKER_DEFAULT_PROFILE);
    let workspace = syscalls(WORKSPACE_PROFILE);
    assert_eq!(
        &workspace[..default.len()],
        &default[..],
        "Docker's rules are kept unchanged and first"
    );
    workspace[default.len()..].to_vec()
}

#[test]
fn profile_extends_docker_default() {
    let default: Value = serde_json::from_str(DOCKER_DEFAULT_PROFILE).unwrap();
    let workspace: Value = serde_json::from_str(WORKSPACE_PROFILE).unwrap();
    assert_eq!(workspace["defaultAction"], default["defaultAction"]);
    assert_eq!(workspace["archMap"], default["archMap"]);

    let names: Vec<String> = added_rules()
        .iter()
        .flat_map(|rule| rule["names"].as_array().unwrap().clone())
        .map(|name| name.as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["clone", "clone", "unshare", "chroot"]);
}

#[test]
fn added_namespace_rules_mask() {
    for rule in added_rules() {
        assert_eq!(rule["action"], "SCMP_ACT_ALLOW");
        let name = rule["names"][0].as_str().unwrap();
        if name == "chroot" {
            continue;
        }

        let args = rule["args"].as_array().unwrap();
        assert_eq!(args.len(), 1, "{name} has one argument condition");
        assert_eq!(args[0]["op"], "SCMP_CMP_MASKED_EQ");
        let mask = args[0]["value"].as_u64().unwrap();
        let expected = args[0]["valueTwo"].as_u64().unwrap_or(0);
        assert_eq!(expected, 0);

        // The flags Chromium's sandbox uses pass the mask, the others do not.
        let allowed = |flags: u64| flags & mask == expected;
        assert!(
            allowed(CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET),
            "{name}"
        );
        for denied in [CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC] {
            assert!(!allowed(CLONE_NEWUSER | denied), "{name} with {denied:#x}");
        }
    }
}

#[test]
fn security_opts_inline_profile() {
    let opts = workspace_security_opts();
    assert_eq!(opts[0], "no-new-privileges:true");

    let inline = opts[1].strip_prefix("seccomp=").unwrap();
    assert!(!inline.contains('\n'));
    let parsed: Value = serde_json::from_str(inline).unwrap();
    let shipped: Value = serde_json::from_str(WORKSPACE_PROFILE).unwrap();
    assert_eq!(parsed, shipped);
}
