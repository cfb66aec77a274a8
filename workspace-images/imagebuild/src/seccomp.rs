//! The seccomp profile of the workspace container.
//!
//! It is Docker's default profile from docker.io 20.10.24 (Debian bookworm) with four
//! rules added so that Chromium's namespace sandbox works without `CAP_SYS_ADMIN`.
//! `clone` and `unshare` may create user, PID and network namespaces, while mount, UTS,
//! IPC and cgroup namespaces stay denied. `chroot` is allowed because the sandbox
//! chroots into an empty directory inside its new user namespace. The kernel still
//! checks capabilities inside that namespace, so the container gains none.

/// Docker's default profile, copied from `profiles/seccomp/default.json` of the Debian
/// package golang-github-docker-docker-dev 20.10.24+dfsg1-1+deb12u1.
pub const DOCKER_DEFAULT_PROFILE: &str = include_str!("../../seccomp/docker-default.json");

/// The workspace profile: [`DOCKER_DEFAULT_PROFILE`] plus the sandbox rules.
pub const WORKSPACE_PROFILE: &str = include_str!("../../seccomp/workspace.json");

/// `HostConfig.SecurityOpt` entries for a workspace container: no-new-privileges and the
/// workspace seccomp profile inline. Docker 20.10's API takes the profile's JSON text
/// after `seccomp=`, as the CLI does after reading the file.
pub fn workspace_security_opts() -> Vec<String> {
    vec![
        "no-new-privileges:true".to_string(),
        format!("seccomp={}", compact(WORKSPACE_PROFILE)),
    ]
}

fn compact(profile: &str) -> String {
    let value: serde_json::Value =
        serde_json::from_str(profile).expect("the shipped seccomp profile is valid JSON");
    value.to_string()
}
