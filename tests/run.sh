#!/usr/bin/env bash
# Run every Helix test: installs what is missing (Debian, as root), then formatting,
# lints, and the whole test suite, including end-to-end tests that start real
# processes (coordinator, agents, a local OCI registry, buildah) on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests use. Keep this list in step with what tests start.
# postgresql: the coordinator's PostgreSQL store tests start throwaway servers of
# their own (tests/src/postgres.rs); util-linux has runuser, to run them as `postgres`.
PACKAGES=(git ca-certificates buildah podman skopeo docker-registry busybox-static iproute2 coreutils systemd dpkg-dev binutils adduser postgresql util-linux)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: these packages are missing and installing them needs root: ${missing[*]}" >&2
    echo "       run: sudo apt-get install -y ${missing[*]}" >&2
    exit 2
  fi
  if [[ " ${missing[*]} " == *" postgresql "* ]]; then
    # The tests never use the package's default cluster: do not create (and start) one.
    mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/helix-tests.conf
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# PostgreSQL's server binaries are not on PATH: check them (and the user they run as)
# here, so a broken install fails now, naming the package, not in the middle of the tests.
for tool in initdb pg_ctl postgres psql; do
  compgen -G "/usr/lib/postgresql/*/bin/$tool" >/dev/null || { echo "error: PostgreSQL's $tool is missing from /usr/lib/postgresql/<version>/bin: apt-get install postgresql" >&2; exit 2; }
done
id -u postgres >/dev/null 2>&1 || { echo "error: there is no postgres user to run PostgreSQL's tests as: apt-get install --reinstall postgresql-common" >&2; exit 2; }

for tool in cargo rustfmt cargo-clippy; do
  command -v "$tool" >/dev/null || { echo "error: $tool is missing: install the Rust toolchain (rustup, with rustfmt and clippy)" >&2; exit 2; }
done

# The packaging test builds .debs with cargo-deb: install it now, not in the middle
# of the tests (compiling it takes minutes on a small machine).
if ! cargo deb --version >/dev/null 2>&1; then
  echo "==> installing cargo-deb (for the packaging test)"
  cargo install cargo-deb --locked
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --workspace --locked
