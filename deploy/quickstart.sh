#!/usr/bin/env bash
# Helix quickstart: on a fresh Debian machine, as root.
#
# Installs what is missing, builds the binaries, and runs a whole cluster on
# loopback: a local OCI registry, a coordinator, and two agents (the second
# advertises linux/arm64: the example has no RUN step, so it builds natively on any
# machine). It submits a linux/amd64 + linux/arm64 build of deploy/examples/hello,
# follows its output, prints the pushed multi-arch index, submits it once more to
# show the result cache, and stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

PACKAGES=(git buildah skopeo docker-registry ca-certificates)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
command -v cc >/dev/null || missing+=(gcc)
if [ ${#missing[@]} -gt 0 ]; then
  say "Installing ${missing[*]}"
  [ "$(id -u)" -eq 0 ] || { echo "error: installing packages needs root: sudo $0" >&2; exit 2; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "error: cargo is missing; install the Rust toolchain (rustup) first" >&2; exit 2; }

say "Building release binaries (cargo build --release)"
cargo build --release --locked -p helix-coordinator -p helix-agent
BIN=$PWD/target/release

WORK=$(mktemp -d /tmp/helix-quickstart.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo
  echo "Stopped everything this script started. Logs and data are in $WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
  || echo $((20000 + RANDOM % 20000)); }

say "Starting a local OCI registry (docker-registry) on 127.0.0.1"
REG_PORT=$(free_port)
REGISTRY=127.0.0.1:$REG_PORT
mkdir -p "$WORK/registry"
cat > "$WORK/registry/config.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $WORK/registry/data
  delete:
    enabled: true
http:
  addr: $REGISTRY
YAML
docker-registry serve "$WORK/registry/config.yml" >"$WORK/registry.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$REG_PORT") 2>/dev/null && break
  sleep 0.1
done
echo "registry at http://$REGISTRY"

say "Initializing the coordinator (cluster CA, certificates, store) in $WORK/coordinator"
"$BIN/helix-coordinator" init --data-dir "$WORK/coordinator" --cluster quickstart

say "Starting the coordinator (mutual-TLS QUIC on 127.0.0.1)"
METRICS=127.0.0.1:$(free_port)
"$BIN/helix-coordinator" serve --data-dir "$WORK/coordinator" --listen 127.0.0.1:0 \
  --allow-file-repos --insecure-registry "$REGISTRY" --metrics-listen "$METRICS" 2>"$WORK/coordinator.log" &
PIDS+=($!)
ADDR=
for _ in $(seq 100); do
  ADDR=$(grep -o '^helix-coordinator listening on [^ ]*$' "$WORK/coordinator.log" | head -1 | awk '{print $4}') || true
  [ -n "$ADDR" ] && break
  sleep 0.1
done
[ -n "$ADDR" ] || { cat "$WORK/coordinator.log"; echo "error: the coordinator did not start" >&2; exit 1; }
echo "coordinator listening on $ADDR (metrics: http://$METRICS/metrics)"
export HELIX_COORDINATOR=$ADDR HELIX_ADMIN_CERT=$WORK/coordinator/admin.pem

for spec in "amd64-1:linux/amd64" "arm64-1:linux/arm64"; do
  name=${spec%%:*}; platform=${spec#*:}
  say "Enrolling agent $name ($platform) with a one-time join token"
  TOKEN=$("$BIN/helix-coordinator" token create --ttl 10m)
  "$BIN/helix-agent" join --coordinator "$ADDR" --token "$TOKEN" --data-dir "$WORK/$name" --name "$name"
  "$BIN/helix-agent" run --data-dir "$WORK/$name" --platform "$platform" \
    --insecure-registry "$REGISTRY" 2>"$WORK/$name.log" &
  PIDS+=($!)
done
for _ in $(seq 100); do
  [ "$("$BIN/helix-coordinator" agents list --json | grep -c '"connected": true')" -ge 2 ] && break
  sleep 0.1
done

say "Agents (helix-coordinator agents list)"
"$BIN/helix-coordinator" agents list

say "Creating the example repository from deploy/examples/hello"
REPO=$WORK/example-repo
cp -r deploy/examples/hello "$REPO"
git -C "$REPO" init -q -b main
git -C "$REPO" add -A
git -C "$REPO" -c user.name=quickstart -c user.email=quickstart@localhost commit -q -m "hello"
echo "file://$REPO at commit $(git -C "$REPO" rev-parse --short HEAD)"

say "Submitting a linux/amd64 + linux/arm64 build (build submit --follow)"
"$BIN/helix-coordinator" build submit --repo "file://$REPO" --ref main \
  --platform linux/amd64,linux/arm64 --tag "$REGISTRY/quickstart/hello:latest" --follow

say "The multi-arch index in the registry (skopeo inspect --raw)"
skopeo inspect --raw --tls-verify=false "docker://$REGISTRY/quickstart/hello:latest"
echo

say "Submitting the same build again: served from the result cache, no agent work"
start=$(date +%s%N)
"$BIN/helix-coordinator" build submit --repo "file://$REPO" --ref main \
  --platform linux/amd64,linux/arm64 --tag "$REGISTRY/quickstart/hello:latest" --wait
echo "finished in $(( ($(date +%s%N) - start) / 1000000 )) ms"
