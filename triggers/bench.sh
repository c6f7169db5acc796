#!/usr/bin/env bash
# triggers/bench.sh: what the pgcable triggers cost writers.
#
# Creates a scratch database (dropped on exit) with sql/schema.sql and 100,000 characters
# (10,000 of them in one campaign), then measures four cases:
#   none    no triggers
#   notify  the floor of any NOTIFY design: a statement trigger sending one tiny NOTIFY
#   row     a FOR EACH ROW variant (one NOTIFY per changed row; defined here, not installed anywhere)
#   stmt    triggers/install.sql (FOR EACH STATEMENT with transition tables, batched NOTIFYs)
# For each: single-row UPDATE throughput (pgbench, CLIENTS clients, DURATION seconds, best of
# ROUNDS runs), the time of one UPDATE of all 10,000 characters of a campaign (real change, then
# touch of updated_at only; median of RUNS runs; in parentheses the part spent in triggers, from
# EXPLAIN ANALYZE, which leaves out commit-time NOTIFY work) and how many NOTIFYs it sends.
# No session LISTENs during the timed runs.
#
# Usage: triggers/bench.sh   (env: PGHOST PGPORT PGUSER, CLIENTS=4 DURATION=10 ROUNDS=3 RUNS=5)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
schema="$here/../sql/schema.sql"
export PGHOST="${PGHOST:-127.0.0.1}" PGUSER="${PGUSER:-postgres}"
CLIENTS="${CLIENTS:-4}" DURATION="${DURATION:-10}" ROUNDS="${ROUNDS:-3}" RUNS="${RUNS:-5}"
db="pgcable_bench_$$"
work="$(mktemp -d)"

psql_() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }
cleanup() { psql_ -d postgres -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

[ -f "$schema" ] || { echo "bench.sh: $schema not found" >&2; exit 1; }

psql_ -d postgres -c "CREATE DATABASE $db"
psql_ -d "$db" -f "$schema" >/dev/null
psql_ -d "$db" >/dev/null <<'SQL'
SET client_min_messages = warning;
INSERT INTO users (id, created_at, updated_at, jti)
VALUES ('00000000-0000-4000-8000-000000000001', now(), now(), 'bench');
INSERT INTO campaigns (id, user_id, name)
SELECT ('00000000-0000-4000-8000-0000000000' || lpad(to_hex(c), 2, '0'))::uuid,
       '00000000-0000-4000-8000-000000000001', 'campaign ' || c
  FROM generate_series(1, 10) c;
-- Row k has id md5(k)::uuid; rows 1..10,000 are in campaign ...01, the rest spread over 2..10.
INSERT INTO characters (id, name, created_at, updated_at, campaign_id, impairments, action_values,
                        description, skills, status)
SELECT md5(k::text)::uuid, 'Character ' || k, now(), now(),
       ('00000000-0000-4000-8000-0000000000' || lpad(to_hex(CASE WHEN k <= 10000 THEN 1 ELSE 2 + k % 9 END), 2, '0'))::uuid,
       0,
       jsonb_build_object('Type', 'PC', 'Guns', 13, 'Martial Arts', 7, 'Defense', 14, 'Toughness', 7,
                          'Speed', 7, 'Fortune', 7, 'Max Fortune', 7, 'Wounds', 0, 'MainAttack', 'Guns',
                          'SecondaryAttack', 'Martial Arts', 'FortuneType', 'Chi', 'Archetype', 'Killer'),
       jsonb_build_object('Age', '35', 'Height', '180', 'Weight', '80', 'Eye Color', 'brown',
                          'Hair Color', 'black', 'Appearance', repeat('A long <b>description</b>. ', 12),
                          'Background', repeat('Grew up on the docks. ', 10), 'Melodramatic Hook', 'Revenge'),
       jsonb_build_object('Driving', 10, 'Intrusion', 12, 'Police', 8, 'Info: Guns', 15),
       '[]'::jsonb
  FROM generate_series(1, 100000) k;
VACUUM ANALYZE;
SQL

# The floor of any NOTIFY-per-statement design: one small NOTIFY per statement, nothing else.
notify_variant() {
psql_ -d "$db" >/dev/null <<'SQL'
CREATE SCHEMA IF NOT EXISTS pgcable_bench;
CREATE OR REPLACE FUNCTION pgcable_bench.notify_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgcable', 'x' || txid_current()::text);
    RETURN NULL;
END $$;
CREATE TRIGGER pgcable_bench_notify AFTER UPDATE ON public.characters
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable_bench.notify_only();
SQL
}
no_notify_variant() {
    psql_ -d "$db" -c "DROP TRIGGER IF EXISTS pgcable_bench_notify ON public.characters" >/dev/null 2>&1
}

# The FOR EACH ROW variant, for comparison only. Same payloads as install.sql, one per row.
row_variant() {
psql_ -d "$db" >/dev/null <<'SQL'
SET client_min_messages = warning;
CREATE SCHEMA IF NOT EXISTS pgcable_bench;
CREATE OR REPLACE FUNCTION pgcable_bench.row_change() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    head text := '{"k":"r","t":' || to_json(TG_TABLE_NAME::text)::text || ',"c":[';
    tmp record;
    act text;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.id IS NOT DISTINCT FROM OLD.id THEN
        IF NEW OPERATOR(pg_catalog.*=) OLD THEN
            RETURN NULL;
        END IF;
        act := 'u';
        IF NEW.updated_at IS DISTINCT FROM OLD.updated_at THEN
            tmp := NEW;
            tmp.updated_at := OLD.updated_at;
            IF tmp OPERATOR(pg_catalog.*=) OLD THEN act := 't'; END IF;
        END IF;
        PERFORM pg_notify('pgcable', head || '["' || act || '",' || to_json(NEW.id)::text || ','
            || coalesce(to_json(NEW.campaign_id)::text, 'null')
            || CASE WHEN NEW.campaign_id IS NOT DISTINCT FROM OLD.campaign_id THEN ''
                    ELSE ',' || coalesce(to_json(OLD.campaign_id)::text, 'null') END || ']]}');
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('pgcable', head || '["d",' || to_json(OLD.id)::text || ',null'
            || CASE WHEN OLD.campaign_id IS NULL THEN '' ELSE ',' || to_json(OLD.campaign_id)::text END || ']]}');
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        PERFORM pg_notify('pgcable', head || '["i",' || to_json(NEW.id)::text || ','
            || coalesce(to_json(NEW.campaign_id)::text, 'null')
            || CASE WHEN NEW.campaign_id IS NULL THEN '' ELSE ',null' END || ']]}');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER pgcable_bench_row AFTER INSERT OR UPDATE OR DELETE ON public.characters
    FOR EACH ROW EXECUTE FUNCTION pgcable_bench.row_change();
SQL
}
no_row_variant() {
    psql_ -d "$db" -c "DROP TRIGGER IF EXISTS pgcable_bench_row ON public.characters" \
          -c "DROP SCHEMA IF EXISTS pgcable_bench CASCADE" >/dev/null 2>&1
}

cat >"$work/update.sql" <<'SQL'
\set k random(1, 100000)
\set v random(0, 1000000)
UPDATE characters SET impairments = :v, updated_at = now() WHERE id = md5(:k::text)::uuid;
SQL

# tps of one pgbench run
tps() {
    pgbench -n -M prepared -c "$CLIENTS" -j "$CLIENTS" -T "$DURATION" -f "$work/update.sql" "$db" 2>&1 \
        | sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | head -1
}

# time in ms of one statement, in its own transaction
ms() {
    psql -X -q -d "$db" -c '\timing on' -c "$1" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p'
}
# ms spent in the statement's triggers (EXPLAIN ANALYZE, rolled back; excludes commit work)
trigger_ms() {
    psql -X -q -d "$db" -c BEGIN -c "EXPLAIN (ANALYZE, COSTS OFF) $1" -c ROLLBACK \
        | sed -n 's/^ *Trigger [^:]*: time=\([0-9.]*\) .*/\1/p' | awk '{t += $1} END {printf "%.0f", t}'
}
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {printf "%.0f", a[int((NR+1)/2)]}'; }
best() { tr ' ' '\n' | grep . | sort -n | tail -1 | awk '{printf "%.0f", $1}'; }

# NOTIFYs received by a session that LISTENs and runs the statement
notifies() {
    psql -X -q -d "$db" -c 'LISTEN pgcable' -c "$1" | grep -c '^Asynchronous notification' || true
}

bulk_update="UPDATE characters SET impairments = impairments + 1, updated_at = now() WHERE campaign_id = '00000000-0000-4000-8000-000000000001'"
bulk_touch="UPDATE characters SET updated_at = updated_at + interval '1 ms' WHERE campaign_id = '00000000-0000-4000-8000-000000000001'"

# same starting point for every measurement: no dead rows, nothing dirty
reset() { psql_ -d "$db" -c "VACUUM FULL ANALYZE characters" -c CHECKPOINT >/dev/null; }

use_case() {
    no_notify_variant
    no_row_variant
    psql_ -d "$db" -f "$here/uninstall.sql" >/dev/null
    case "$1" in
        none) ;;
        notify) notify_variant ;;
        row) row_variant ;;
        stmt) psql_ -d "$db" -f "$here/install.sql" >/dev/null ;;
    esac
}

# Cases are interleaved, so that load from elsewhere on the machine spreads over all of them.
cases="none notify row stmt"
declare -A R
for ((r = 0; r < RUNS; r++)); do
    for case in $cases; do
        use_case "$case"
        reset
        R[$case,upd]+=" $(ms "$bulk_update")"
        R[$case,touch]+=" $(ms "$bulk_touch")"
        R[$case,trig]+=" $(trigger_ms "$bulk_update")"
        R[$case,trigt]+=" $(trigger_ms "$bulk_touch")"
    done
done
for case in $cases; do
    use_case "$case"
    R[$case,n]=$(notifies "$bulk_update")
done
for ((r = 0; r < ROUNDS; r++)); do
    for case in $cases; do
        use_case "$case"
        reset
        R[$case,tps]+=" $(tps)"
    done
done

pgv=$(psql -X -At -d "$db" -c "SHOW server_version")
sc=$(psql -X -At -d "$db" -c "SHOW synchronous_commit")
printf '\nPostgreSQL %s, synchronous_commit=%s, %s CPUs; tps: best of %s pgbench -c %s -T %s runs; ms: median of %s runs\n' \
    "$pgv" "$sc" "$(nproc)" "$ROUNDS" "$CLIENTS" "$DURATION" "$RUNS"
printf '%-6s | %16s | %26s | %26s | %18s\n' case "1-row UPDATE tps" "10k UPDATE ms (triggers)" "10k touch ms (triggers)" "10k UPDATE NOTIFYs"
printf '%-6s-+-%16s-+-%26s-+-%26s-+-%18s\n' ------ ---------------- -------------------------- -------------------------- ------------------
for case in $cases; do
    printf '%-6s | %16s | %26s | %26s | %18s\n' "$case" "$(best <<<"${R[$case,tps]}")" \
        "$(median <<<"${R[$case,upd]}") ($(median <<<"${R[$case,trig]}"))" \
        "$(median <<<"${R[$case,touch]}") ($(median <<<"${R[$case,trigt]}"))" "${R[$case,n]}"
done
