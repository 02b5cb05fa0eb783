#!/usr/bin/env bash
# Install the executor systemd units, the service user and a default config.
# Idempotent: safe to re-run after an upgrade. Units are replaced; an existing executor.toml is kept.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: scripts/install-service.sh [options]

  --executable PATH  the executor entry point ExecStart runs (default /usr/local/bin/executor)
  --instance NAME    also create /etc/executor/NAME/ for the executor@NAME template unit
  --prefix DIR       install under DIR instead of / (no user, chgrp or systemctl: for staging
                     and tests, runs without root)
  --dry-run          print the commands that change something instead of running them
  -h, --help         this text
USAGE
}

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix=""
dry_run=0
instance=""
executable="/usr/local/bin/executor"
service_user="executor"

while (($#)); do
    case "$1" in
        --prefix) prefix="${2:?--prefix needs a directory}"; shift 2 ;;
        --prefix=*) prefix="${1#*=}"; shift ;;
        --instance) instance="${2:?--instance needs a name}"; shift 2 ;;
        --instance=*) instance="${1#*=}"; shift ;;
        --executable) executable="${2:?--executable needs a path}"; shift 2 ;;
        --executable=*) executable="${1#*=}"; shift ;;
        --dry-run) dry_run=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "install-service.sh: unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done

die() { echo "install-service.sh: $*" >&2; exit 1; }

# Installing into / touches the real system: users, groups and the running systemd.
prefix="${prefix%/}"
system=0
if [[ -z "$prefix" ]]; then
    system=1
fi

if ((system && !dry_run && EUID != 0)); then
    die "must be run as root (or try --dry-run, or --prefix DIR to stage the files)"
fi
# %i ends up in paths, and sed below uses '#' as its delimiter.
if [[ -n "$instance" && ! "$instance" =~ ^[a-z0-9_-]+$ ]]; then
    die "--instance: use lowercase letters, digits, '_' and '-' only, got '$instance'"
fi
if [[ "$executable" != /* || "$executable" =~ [[:space:]#] ]]; then
    die "--executable: need an absolute path without spaces, got '$executable'"
fi

# Show every command that changes something; with --dry-run, only show it.
run() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    if ((!dry_run)); then
        "$@"
    fi
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# 1. A dedicated system user with no login and no home of its own: systemd creates and owns
#    /var/lib/executor for it (StateDirectory=).
if ((system)); then
    if getent passwd "$service_user" >/dev/null; then
        echo "user $service_user: exists"
    else
        run useradd --system --user-group --home-dir /var/lib/executor --no-create-home \
            --shell /usr/sbin/nologin --comment "executor daemon" "$service_user"
    fi
fi

# 2. Config: never overwrite, the admin may have edited it.
install_config() {
    local dir="$1"
    run install -d -m 0755 "$dir" "$dir/executor.d"
    if [[ -e "$dir/executor.toml" ]]; then
        echo "config $dir/executor.toml: exists, kept"
        return
    fi
    # 0640 root:executor: the service reads it through its group; others cannot read future secrets.
    run install -m 0640 "$repo/config/executor.toml" "$dir/executor.toml"
    if ((system)); then
        run chgrp "$service_user" "$dir/executor.toml"
    fi
}
etc="$prefix/etc/executor"
install_config "$etc"
if [[ -n "$instance" ]]; then
    install_config "$etc/$instance"
fi

# 3. Units, always replaced so an upgrade picks up the new ones. Local changes belong in
#    `systemctl edit executor` drop-ins, which survive this.
unit_dir="$prefix/etc/systemd/system"
run install -d -m 0755 "$unit_dir"
for unit in executor.service executor@.service; do
    sed -e "s#^ExecStart=/usr/local/bin/executor #ExecStart=$executable #" \
        "$repo/systemd/$unit" >"$tmp/$unit"
    run install -m 0644 "$tmp/$unit" "$unit_dir/$unit"
done

# 4. Make systemd see the new units, when it is running (not in a container build or a chroot).
if ((system)); then
    if [[ -d /run/systemd/system ]]; then
        run systemctl daemon-reload
    else
        echo "systemd is not running here: skipped systemctl daemon-reload"
    fi
fi

if ((system)) && [[ ! -x "$executable" ]]; then
    echo "warning: $executable does not exist yet: pip install executor there," \
        "or re-run with --executable PATH" >&2
fi

# Paths as the target system sees them, without --prefix.
name="executor"
config_dir="/etc/executor"
if [[ -n "$instance" ]]; then
    name="executor@$instance"
    config_dir="/etc/executor/$instance"
fi
cat <<NEXT

Next steps:
  1. Edit $config_dir/executor.toml (at least daemon.workflows), or add a drop-in
     in $config_dir/executor.d/.
  2. Check it:   sudo -u $service_user $executable check-config --config $config_dir/executor.toml
  3. Start it:   systemctl enable --now $name
  4. Watch it:   systemctl status $name; journalctl -u $name -f
  Reload config: systemctl reload $name (log level/format, concurrency, poll interval apply live)
NEXT
