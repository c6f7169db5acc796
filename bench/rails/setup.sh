#!/usr/bin/env bash
# bench/rails/setup.sh: installs what the Rails ActionCable side of pgcable-bench needs, from
# Debian's packages, if it is missing: Ruby, ActionCable, ActiveRecord (the postgresql
# subscription adapter takes its LISTEN connection from ActiveRecord's pool), the pg driver and
# the puma Rack server. Safe to run again; does nothing when everything is there.
set -euo pipefail

packages=(ruby ruby-actioncable ruby-activerecord ruby-pg puma)

if ruby -e 'require "action_cable"; require "active_record"; require "pg"; require "puma"' >/dev/null 2>&1 \
    && command -v puma >/dev/null 2>&1; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "bench/rails/setup.sh: run as root (or: sudo apt-get install ${packages[*]})" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
ruby -e 'require "action_cable"; require "active_record"; require "pg"; require "puma"; puts "ActionCable #{ActionCable.version}, ActiveRecord #{ActiveRecord.version}, pg #{PG::VERSION}, puma #{Puma::Const::PUMA_VERSION}"'
