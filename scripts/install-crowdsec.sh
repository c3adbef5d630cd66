#!/bin/sh
# Install Debian's crowdsec package (LAPI + cscli) for the tests, offline.
#
# The package registers with the online CAPI at install time, which fails
# without internet. A non-empty online_api_credentials.yaml written before
# installing makes it skip that step. The tests run private LAPI instances
# (internal/lapitest), so the system service is stopped and disabled and
# must not hold 127.0.0.1:8080.
#
# Idempotent: running it again on an installed system changes nothing.
set -eu

PKG=crowdsec
ETC=/etc/crowdsec
CREDS=$ETC/online_api_credentials.yaml

say() { printf 'install-crowdsec: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
	say "must run as root" >&2
	exit 1
fi

installed() {
	dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null | grep -q '^install ok installed$'
}

if installed && command -v crowdsec >/dev/null && command -v cscli >/dev/null; then
	say "$PKG $(dpkg-query -W -f='${Version}' "$PKG") already installed"
else
	if [ ! -s "$CREDS" ]; then
		say "writing placeholder $CREDS (skips CAPI registration)"
		mkdir -p "$ETC"
		printf '# offline: no online API (CAPI) registration\n' >"$CREDS"
	fi
	if ! apt-cache show "$PKG" >/dev/null 2>&1; then
		say "$PKG not in the apt cache: apt-get update"
		apt-get update
	fi
	say "apt-get install $PKG"
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$PKG"
fi

# The system instance would hold 127.0.0.1:8080 and talk to CAPI; the tests
# start their own. Stop and disable it if the package started or enabled it.
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
	if systemctl is-active --quiet crowdsec.service 2>/dev/null; then
		say "stopping crowdsec.service"
		systemctl stop crowdsec.service
	fi
	if systemctl is-enabled --quiet crowdsec.service 2>/dev/null; then
		say "disabling crowdsec.service"
		systemctl disable crowdsec.service
	fi
elif [ -e /etc/systemd/system/multi-user.target.wants/crowdsec.service ]; then
	# systemd is not running (a container): drop the enablement symlink the
	# package created, so a later boot does not start it.
	say "disabling crowdsec.service (systemd not running)"
	systemctl disable crowdsec.service 2>/dev/null ||
		rm -f /etc/systemd/system/multi-user.target.wants/crowdsec.service
fi
# Without systemd the package's postinst may have started a daemon through
# the init script: stop the one running the system configuration.
for pid in $(pgrep -x crowdsec 2>/dev/null || true); do
	case "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)" in
	*"$ETC/config.yaml"*)
		say "stopping system crowdsec (pid $pid)"
		kill "$pid" 2>/dev/null || true
		;;
	esac
done
if command -v ss >/dev/null && ss -Hltn 'sport = :8080' | grep -q .; then
	say "warning: something still listens on port 8080:"
	ss -Hltnp 'sport = :8080' | sed 's/^/install-crowdsec:   /'
fi

# Keep the system configuration from ever contacting CAPI if someone starts
# it by hand: drop the online_client block from the server section.
if [ -f "$ETC/config.yaml" ] && grep -q '^[[:space:]]*online_client:' "$ETC/config.yaml"; then
	say "removing online_client from $ETC/config.yaml"
	# The block is two lines: "online_client:" and its "credentials_path:".
	sed -i '/^[[:space:]]*online_client:/{N;/\n[[:space:]]*credentials_path:/d}' "$ETC/config.yaml"
fi

say "crowdsec: $(command -v crowdsec), cscli: $(command -v cscli)"
crowdsec -version 2>&1 | head -n 1 | sed 's/^/install-crowdsec: /'
