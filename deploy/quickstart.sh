#!/usr/bin/env bash
# Helix quickstart: on a fresh Debian machine, as root.
#
# Today this builds the binaries and brings up a secure cluster on loopback: a
# coordinator and two agents (one advertising linux/arm64) enrolled with join tokens,
# then lists them. The build flow (submit -> buildah -> push -> multi-arch index) is
# the next milestone and is NOT available yet; this script says so instead of
# pretending to build anything.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

need=()
command -v git >/dev/null || need+=(git)
command -v cc >/dev/null || need+=(gcc)
if [ ${#need[@]} -gt 0 ]; then
  say "Installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "error: cargo is missing; install the Rust toolchain (https://rustup.rs) first" >&2; exit 2; }

say "Building release binaries"
cargo build --release --locked -p helix-coordinator -p helix-agent
BIN=$PWD/target/release

WORK=$(mktemp -d /tmp/helix-quickstart.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "Logs are in $WORK"
}
trap cleanup EXIT

say "Initializing a coordinator in $WORK/coordinator"
"$BIN/helix-coordinator" init --data-dir "$WORK/coordinator" --cluster quickstart

say "Starting the coordinator on 127.0.0.1 (a free UDP port)"
"$BIN/helix-coordinator" serve --data-dir "$WORK/coordinator" --listen 127.0.0.1:0 2>"$WORK/coordinator.log" &
PIDS+=($!)
for _ in $(seq 100); do
  ADDR=$(grep -o 'listening on .*' "$WORK/coordinator.log" | head -1 | awk '{print $3}') || true
  [ -n "${ADDR:-}" ] && break
  sleep 0.1
done
[ -n "${ADDR:-}" ] || { cat "$WORK/coordinator.log"; echo "error: the coordinator did not start" >&2; exit 1; }
echo "coordinator listening on $ADDR"
export HELIX_COORDINATOR=$ADDR HELIX_ADMIN_CERT=$WORK/coordinator/admin.pem

for spec in "amd64-1:linux/amd64" "arm64-1:linux/arm64"; do
  name=${spec%%:*}; platform=${spec#*:}
  say "Enrolling agent $name ($platform) with a one-time join token"
  TOKEN=$("$BIN/helix-coordinator" token create --ttl 10m)
  "$BIN/helix-agent" join --coordinator "$ADDR" --token "$TOKEN" --data-dir "$WORK/$name" --name "$name"
  "$BIN/helix-agent" run --data-dir "$WORK/$name" --platform "$platform" 2>"$WORK/$name.log" &
  PIDS+=($!)
done

say "Agents (helix-coordinator agents list)"
for _ in $(seq 50); do
  [ "$("$BIN/helix-coordinator" agents list --json | grep -c '"connected": true')" -ge 2 ] && break
  sleep 0.1
done
"$BIN/helix-coordinator" agents list

say "Not available yet: submitting a multi-arch build"
echo "The build lifecycle (build submit, buildah on the agents, push by digest, index"
echo "assembly) is the next milestone of Helix; this quickstart stops here honestly."
