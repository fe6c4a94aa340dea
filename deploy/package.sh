#!/usr/bin/env bash
# Build the Debian packages helix-coordinator and helix-agent with cargo-deb.
#
#   deploy/package.sh [--target TRIPLE] [--out DIR] [--fast] [--profile NAME]
#
#   --target TRIPLE  cross-build, e.g. aarch64-unknown-linux-gnu (an arm64 package);
#                    default: this machine's architecture
#   --out DIR        where the .deb files go (default: dist/)
#   --fast           lighter compression: bigger files, made faster (for tests)
#   --profile NAME   cargo profile (default: release). `--profile dev` packages the
#                    debug binaries the tests already built; for tests only
#                    (cargo-deb warns that it does not support it for releases)
#
# What it does, printing each command: installs cargo-deb if it is missing
# (`cargo install cargo-deb --locked`), checks the toolchain for --target, builds both
# binaries once with `cargo build --profile release --locked` (cargo reuses an
# up-to-date build, so a second run only packages), then runs `cargo deb --no-build`
# for each package. The packaging is described in the [package.metadata.deb]
# sections of coordinator/Cargo.toml and agent/Cargo.toml: the binary in /usr/bin,
# the unit from deploy/systemd, /etc/helix/*.toml from deploy/config (conffiles),
# the maintainer scripts from deploy/debian plus the systemd snippets cargo-deb
# generates. The binaries are stripped; their debug info (line tables) goes into
# helix-*-dbgsym_*.ddeb next to each package.
#
# Exit codes: 0 built, 1 a build step failed, 2 bad usage or a missing prerequisite
# (named, with the command that installs it).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=""
OUT="dist"
FAST=()
PROFILE=release
# The comment block above, as help.
help() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
usage() { help >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --target) [ $# -ge 2 ] || usage; TARGET="$2"; shift 2 ;;
    --target=*) TARGET="${1#--target=}"; shift ;;
    --out) [ $# -ge 2 ] || usage; OUT="$2"; shift 2 ;;
    --out=*) OUT="${1#--out=}"; shift ;;
    --fast) FAST=(--fast); shift ;;
    --profile) [ $# -ge 2 ] || usage; PROFILE="$2"; shift 2 ;;
    --profile=*) PROFILE="${1#--profile=}"; shift ;;
    -h|--help) help; exit 0 ;;
    *) echo "error: unknown argument $1" >&2; usage ;;
  esac
done

say() { printf '==> %s\n' "$*" >&2; }
run() { printf '+ %s\n' "$*" >&2; "$@"; }

missing=()
command -v cargo >/dev/null || { echo "error: cargo is missing: install the Rust toolchain (rustup)" >&2; exit 2; }
# cargo-deb runs dpkg-shlibdeps for the `$auto` dependencies.
command -v dpkg-shlibdeps >/dev/null || missing+=("dpkg-shlibdeps: apt-get install dpkg-dev")
# --dbgsym moves the debug info (line tables, for backtraces) out with objcopy.
command -v objcopy >/dev/null || missing+=("objcopy: apt-get install binutils")

TARGET_ARGS=()
if [ -n "$TARGET" ]; then
  TARGET_ARGS=(--target "$TARGET")
  # The Rust standard library for the target.
  if command -v rustup >/dev/null; then
    rustup target list --installed 2>/dev/null | grep -qx "$TARGET" ||
      missing+=("the Rust target $TARGET: rustup target add $TARGET")
  elif [ ! -d "$(rustc --print sysroot)/lib/rustlib/$TARGET" ]; then
    missing+=("the Rust standard library for $TARGET (no rustup to install it; $(rustc --print sysroot)/lib/rustlib/$TARGET is absent)")
  fi
  # A C cross-compiler, which is also the linker (ring compiles C for the target).
  gnu_triple="${TARGET/-unknown-/-}"
  case "$gnu_triple" in
    armv7-linux-gnueabihf) gnu_triple=arm-linux-gnueabihf ;;
  esac
  env_target=$(echo "$TARGET" | tr 'a-z-' 'A-Z_')
  linker_var="CARGO_TARGET_${env_target}_LINKER"
  linker="${!linker_var:-${gnu_triple}-gcc}"
  if command -v "$linker" >/dev/null; then
    export "$linker_var=$linker"
    cc_var="CC_${TARGET//-/_}"
    export "$cc_var=${!cc_var:-$linker}"
    say "cross-building for $TARGET with $linker ($linker_var, $cc_var)"
  else
    missing+=("the linker and C cross-compiler $linker for $TARGET: apt-get install gcc-${gnu_triple//_/-} (or set $linker_var)")
  fi
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "error: cannot build the packages${TARGET:+ for $TARGET}; missing:" >&2
  for m in "${missing[@]}"; do echo "  - $m" >&2; done
  exit 2
fi

if ! cargo deb --version >/dev/null 2>&1; then
  say "cargo-deb is missing: installing it from crates.io"
  run cargo install cargo-deb --locked || { echo "error: cannot install cargo-deb (cargo install cargo-deb --locked failed)" >&2; exit 1; }
fi
say "$(cargo deb --version)"

say "building the $PROFILE binaries (reused when up to date)"
run cargo build --profile "$PROFILE" --locked -p helix-coordinator -p helix-agent "${TARGET_ARGS[@]}" ||
  { echo "error: cargo build failed" >&2; exit 1; }

mkdir -p "$OUT"
for pkg in helix-coordinator helix-agent; do
  say "packaging $pkg"
  run cargo deb --no-build --locked --profile "$PROFILE" -p "$pkg" "${TARGET_ARGS[@]}" "${FAST[@]}" --dbgsym --output "$OUT/" ||
    { echo "error: cargo deb failed for $pkg" >&2; exit 1; }
done

say "packages in $OUT/:"
ls -1 "$OUT"/*.deb "$OUT"/*.ddeb >&2
