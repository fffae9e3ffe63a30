#!/usr/bin/env bash
# promtool and prometheus for the alert-rule tests (tests/unit/test_alert_rules.py) and a
# local Prometheus (prometheus.yml). Idempotent: nothing to do when both are on PATH.
# Otherwise installs Debian's `prometheus` package (it carries both), as root, and makes
# sure the package's own service is not left running: it would hold :9090 and scrape
# nothing of ours. Not root: prints the command to run and exits 1.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

versions() {
  promtool --version 2>&1 | head -n 1
  prometheus --version 2>&1 | head -n 1
}

if have promtool && have prometheus; then
  versions
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "promtool/prometheus not found on PATH. Install them as root:" >&2
  echo "  sudo $0" >&2
  echo "or:" >&2
  echo "  sudo env DEBIAN_FRONTEND=noninteractive sh -c 'apt-get update && apt-get install -y --no-install-recommends prometheus'" >&2
  exit 1
fi

if ! have apt-get; then
  echo "no apt-get here: install promtool and prometheus (https://prometheus.io/download/) and put them on PATH" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Another apt-get or dpkg may be running (an image build, unattended upgrades): wait for
# its lock instead of failing.
APT=(apt-get -o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)

# Prometheus processes that were already running (someone's own): never touched.
before=" $(pgrep -x prometheus | tr '\n' ' ' || true) "

"${APT[@]}" update
"${APT[@]}" install -y --no-install-recommends prometheus

# The package enables and (where the init system lets it) starts prometheus.service.
if [ -d /run/systemd/system ] && have systemctl; then
  systemctl stop prometheus.service >/dev/null 2>&1 || true
  systemctl disable prometheus.service >/dev/null 2>&1 || true
elif have service; then
  service prometheus stop >/dev/null 2>&1 || true
fi
# Without systemd (containers) the init script may have started it anyway: stop the
# processes that appeared during the install, by pid.
for pid in $(pgrep -x prometheus || true); do
  case "$before" in
    *" $pid "*) ;;
    *)
      echo "stopping prometheus (pid $pid) started by the package"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
      ;;
  esac
done

if ! (have promtool && have prometheus); then
  echo "the prometheus package is installed but promtool/prometheus are not on PATH" >&2
  exit 1
fi
versions
