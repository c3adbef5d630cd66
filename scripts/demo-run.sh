#!/usr/bin/env bash
# The xdpgate demo: a real CrowdSec LAPI, a client network namespace joined
# to this host by a veth pair, and xdpgate dropping the client in XDP once
# cscli bans it. Cleans up after itself. Run through `make demo` (or
# scripts/demo.sh on a fresh machine), as root.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-bin/xdpgate}
NS=xgdemo
HOST_IF=xgdemo0
HOST_IP=10.213.0.1
CLIENT_IP=10.213.0.2
PIN=/sys/fs/bpf/xdpgate-demo
WORK=$(mktemp -d /tmp/xdpgate-demo.XXXXXX)
CONF=$WORK/xdpgate.yaml
METRICS_PORT=60611
BOUNCER=xdpgate-demo-$$
LAPI_PID= AGENT_PID=

step() { printf '\n\033[1;36m==> %s\033[0m\n' "$*"; }
run() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }

cleanup() {
	set +e
	step "cleaning up"
	[ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
	"$BIN" uninstall --pin-path "$PIN" -c "$CONF" >/dev/null 2>&1
	ip netns del "$NS" 2>/dev/null
	cscli bouncers delete "$BOUNCER" >/dev/null 2>&1
	cscli decisions delete --ip "$CLIENT_IP" >/dev/null 2>&1
	[ -n "$LAPI_PID" ] && kill "$LAPI_PID" 2>/dev/null && wait "$LAPI_PID" 2>/dev/null
	rm -rf "$WORK"
	echo "done: no namespace, pin, table or process of the demo is left"
}
trap cleanup EXIT

lapi_up() { (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null; }

step "a CrowdSec Local API on 127.0.0.1:8080"
if lapi_up; then
	echo "a LAPI already answers there: using it"
else
	crowdsec -c /etc/crowdsec/config.yaml -no-cs >"$WORK/crowdsec.log" 2>&1 &
	LAPI_PID=$!
	for _ in $(seq 100); do lapi_up && break; sleep 0.1; done
	lapi_up || { cat "$WORK/crowdsec.log"; exit 1; }
	echo "started crowdsec -no-cs (pid $LAPI_PID)"
fi
KEY=$(cscli bouncers add "$BOUNCER" -o raw)

step "a client namespace ($CLIENT_IP) joined to this host ($HOST_IP) by a veth pair"
ip netns del "$NS" 2>/dev/null || true
run ip link add "$HOST_IF" type veth peer name eth0 netns "$NS" 2>/dev/null || {
	ip netns add "$NS"
	run ip link add "$HOST_IF" type veth peer name eth0 netns "$NS"
}
ip addr add "$HOST_IP/24" dev "$HOST_IF"
ip link set "$HOST_IF" up
ip -n "$NS" addr add "$CLIENT_IP/24" dev eth0
ip -n "$NS" link set eth0 up
ip -n "$NS" link set lo up

cat >"$CONF" <<YAML
api_url: http://127.0.0.1:8080/
api_key: $KEY
update_frequency: 1s
interfaces: [$HOST_IF]
pin_path: $PIN
allowlist: [192.168.0.0/16]
prometheus:
  listen_addr: 127.0.0.1
  listen_port: $METRICS_PORT
YAML

step "xdpgate, attached to $HOST_IF"
"$BIN" run -c "$CONF" >"$WORK/xdpgate.log" 2>&1 &
AGENT_PID=$!
for _ in $(seq 100); do
	(exec 3<>"/dev/tcp/127.0.0.1/$METRICS_PORT") 2>/dev/null && grep -q "decisions applied" "$WORK/xdpgate.log" && break
	sleep 0.1
done
sed 's/^/  agent: /' "$WORK/xdpgate.log"

step "the client reaches the host"
run ip netns exec "$NS" ping -c 2 -W 1 "$HOST_IP"

step "ban the client"
run cscli decisions add --ip "$CLIENT_IP" --duration 5m --reason "xdpgate demo"
sleep 2

step "its pings are dropped in XDP"
if run ip netns exec "$NS" ping -c 3 -W 1 "$HOST_IP"; then
	echo "unexpected: the banned client got through" >&2
	exit 1
fi
step "why"
run "$BIN" check "$CLIENT_IP" --pin-path "$PIN" -c "$CONF" || true
run "$BIN" list --pin-path "$PIN" -c "$CONF"
run "$BIN" status --pin-path "$PIN" -c "$CONF"
echo
printf '\033[2m$ curl -s 127.0.0.1:%s/metrics | grep xdpgate_dropped\033[0m\n' "$METRICS_PORT"
exec 3<>"/dev/tcp/127.0.0.1/$METRICS_PORT"
printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3
grep '^xdpgate_dropped' <&3 || true
exec 3<&-

step "unban"
run cscli decisions delete --ip "$CLIENT_IP"
sleep 2
run ip netns exec "$NS" ping -c 2 -W 1 "$HOST_IP"
echo
echo "demo complete: the client was dropped while banned and passes again"
