//! `cargo xtask image REGISTRY/NAME:TAG`: step 0 of the cluster quickstart. Builds the netprof
//! image (deploy/Dockerfile, the repository as context), pushes it, and sets it as the one image
//! of deploy/kustomization.yaml: the agent DaemonSet runs it, and `netprof k8s run` gives the
//! benchmark pods the agents' image. Needs a container engine (docker, or podman with
//! `--engine podman`), which the machines that run the tests do not have.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The image name deploy/ refers to; the kustomization maps it to the pushed one.
const DEPLOY_IMAGE: &str = "ghcr.io/netprof/netprof";

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `NAME:TAG` split at the tag; refuses digests and untagged names (a moving `latest` would
/// let two nodes run different builds).
pub fn split_reference(reference: &str) -> Result<(&str, &str)> {
    let last = reference.rsplit('/').next().unwrap_or_default();
    if reference.contains('@') {
        bail!("{reference}: give a tag (REGISTRY/netprof:TAG), not a digest; the digest is known only after the push");
    }
    match last.rsplit_once(':') {
        Some((_, tag)) if !tag.is_empty() && tag != "latest" => {
            let name = &reference[..reference.len() - tag.len() - 1];
            if name.is_empty() || name.contains(char::is_whitespace) {
                bail!("{reference:?} is not an image reference: give REGISTRY/netprof:TAG");
            }
            Ok((name, tag))
        }
        _ => bail!(
            "{reference}: give an explicit tag other than latest (REGISTRY/netprof:TAG), so every node pulls the same build"
        ),
    }
}

/// The kustomization with `DEPLOY_IMAGE` mapped to `name:tag` (its `images:` entry rewritten).
pub fn set_image(kustomization: &str, name: &str, tag: &str) -> Result<String> {
    let entry = format!("  - name: {DEPLOY_IMAGE}");
    let mut out = Vec::new();
    let mut lines = kustomization.lines().peekable();
    let mut found = false;
    while let Some(line) = lines.next() {
        out.push(line.to_owned());
        if line.trim_end() == entry {
            found = true;
            while lines.peek().is_some_and(|l| l.starts_with("    ")) {
                lines.next();
            }
            out.push(format!("    newName: {name}"));
            out.push(format!("    newTag: \"{tag}\""));
        }
    }
    if !found {
        bail!(
            "deploy/kustomization.yaml has no `images:` entry for {DEPLOY_IMAGE}: add `{}` there",
            entry.trim()
        );
    }
    Ok(out.join("\n") + "\n")
}

fn run(engine: &str, args: &[&str], root: &Path) -> Result<()> {
    let shown = format!("{engine} {}", args.join(" "));
    eprintln!("image: {shown}");
    let status = Command::new(engine)
        .args(args)
        .current_dir(root)
        .status()
        .with_context(|| {
            format!(
                "cannot run `{shown}`: is {engine} installed? (or choose another with --engine)"
            )
        })?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

pub fn image(reference: &str, engine: &str, push: bool) -> Result<()> {
    let (name, tag) = split_reference(reference)?;
    let root = workspace_root();
    run(
        engine,
        &["build", "-f", "deploy/Dockerfile", "-t", reference, "."],
        &root,
    )?;
    if push {
        run(engine, &["push", reference], &root)?;
    }
    let path = root.join("deploy/kustomization.yaml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    std::fs::write(&path, set_image(&text, name, tag)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!(
        "image: {} now maps {DEPLOY_IMAGE} to {reference}",
        path.display()
    );
    if !push {
        eprintln!("image: not pushed (--no-push): the nodes must be able to pull {reference} by themselves");
    }
    eprintln!("image: next: kubectl apply -k deploy/ (then `netprof k8s doctor`)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_need_a_fixed_tag() {
        assert_eq!(
            split_reference("registry.example:5000/team/netprof:v1").unwrap(),
            ("registry.example:5000/team/netprof", "v1")
        );
        for bad in [
            "netprof",
            "registry.example:5000/netprof",
            "x/netprof:latest",
            "x/netprof@sha256:ab",
            ":v1",
        ] {
            assert!(split_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_kustomization_entry_is_rewritten_in_place() {
        let text =
            std::fs::read_to_string(workspace_root().join("deploy/kustomization.yaml")).unwrap();
        let set = set_image(&text, "registry.example/netprof", "v2").unwrap();
        assert!(set.contains("  - name: ghcr.io/netprof/netprof\n    newName: registry.example/netprof\n    newTag: \"v2\"\n"), "{set}");
        assert!(
            set.contains("  - name: docker.io/library/nginx\n    newTag: 1.27-bookworm"),
            "nginx untouched: {set}"
        );
        assert_eq!(
            set_image(&set, "r/n", "v3")
                .unwrap()
                .matches("newName:")
                .count(),
            1
        );
        assert!(set_image("images: []\n", "r/n", "v").is_err());
    }
}
