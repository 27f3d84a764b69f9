//! Stamps the CLI with the source revision it was built from; `palisade package` puts it in the
//! OCI annotations next to the version.

use std::process::Command;

fn main() {
    let rev = std::env::var("PALISADE_GIT_REV").ok().or_else(|| {
        Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .map(|rev| rev.trim().to_owned())
    });
    println!(
        "cargo:rustc-env=PALISADE_GIT_REV={}",
        rev.as_deref().unwrap_or("unknown")
    );
    println!("cargo:rerun-if-env-changed=PALISADE_GIT_REV");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}
