#!/usr/bin/env bash
# triggers/test.sh: checks install.sql / uninstall.sql and every NOTIFY payload they produce.
#
# Creates scratch databases (and one scratch role), loads sql/schema.sql, and drives psql
# sessions that LISTEN pgcable. Everything it creates is dropped on exit.
# Usage: triggers/test.sh          (env: PGHOST=127.0.0.1 PGUSER=postgres PGPORT)
# Exit status 0 when every check passes.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
schema="$here/../sql/schema.sql"
export PGHOST="${PGHOST:-127.0.0.1}" PGUSER="${PGUSER:-postgres}"
db="pgcable_test_$$"
db2="pgcable_test_$$_partial"
writer="pgcable_test_writer_$$"
work="$(mktemp -d)"

psql_() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }
cleanup() {
    psql_ -d postgres -c "DROP DATABASE IF EXISTS $db" -c "DROP DATABASE IF EXISTS $db2" \
          -c "DROP ROLE IF EXISTS $writer" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

fails=0 passes=0
ok()   { passes=$((passes + 1)); echo "ok   $1"; }
fail() { fails=$((fails + 1)); echo "FAIL $1"; [ $# -lt 2 ] || printf '     %s\n' "$2"; }
# expect NAME EXPECTED ACTUAL
expect() {
    if [ "$2" == "$3" ]; then ok "$1"; else fail "$1" "expected: $(printf '%q' "$2")
     actual:   $(printf '%q' "$3")"; fi
}

# expect_any NAME ACTUAL EXPECTED... : ACTUAL is one of the EXPECTED (entry order is not fixed)
expect_any() {
    local name="$1" actual="$2" e
    shift 2
    for e in "$@"; do [ "$e" != "$actual" ] || { ok "$name"; return; }; done
    fail "$name" "expected one of: $(printf '%q ' "$@")
     actual: $(printf '%q' "$actual")"
}

# raw_notifs [psql args] <<SQL : run SQL in a session that LISTENs pgcable; print one payload a line
raw_notifs() {
    { echo 'LISTEN pgcable;'; cat; } | psql -X -q -v ON_ERROR_STOP=1 -d "$db" "$@" -f - 2>&1 \
        | sed -n 's/^Asynchronous notification "pgcable" with payload "\(.*\)" received from server process with PID [0-9]*\.$/\1/p'
}
# notifs: the same without the statement time ("a":<µs>), which differs on every run
notifs() { raw_notifs "$@" | sed 's/,"a":[0-9]*//'; }
q() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$db" "$@"; }

[ -f "$schema" ] || { echo "test.sh: $schema not found" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
echo "# install refuses a database without the three tables"
psql_ -d postgres -c "CREATE DATABASE $db2"
psql_ -d "$db2" -c "CREATE TABLE characters (id uuid PRIMARY KEY, campaign_id uuid, updated_at timestamp)" \
                -c "CREATE TABLE vehicles (id uuid PRIMARY KEY, campaign_id uuid, updated_at timestamp)"
out=$(psql -X -q -v ON_ERROR_STOP=1 -d "$db2" -f "$here/install.sql" 2>&1 || true)
case "$out" in *"table public.fights does not exist"*) ok "missing table: clear error" ;;
               *) fail "missing table: clear error" "$out" ;; esac
expect "missing table: nothing installed" "" "$(psql -X -At -d "$db2" -c "SELECT nspname FROM pg_namespace WHERE nspname = 'pgcable'")"
psql_ -d "$db2" -c "CREATE TABLE fights (id bigint PRIMARY KEY, campaign_id uuid, updated_at timestamp)"
out=$(psql -X -q -v ON_ERROR_STOP=1 -d "$db2" -f "$here/install.sql" 2>&1 || true)
case "$out" in *"public.fights.id is of type bigint, expected uuid"*) ok "wrong id type: clear error" ;;
               *) fail "wrong id type: clear error" "$out" ;; esac
psql_ -d "$db2" -c "DROP TABLE fights" -c "CREATE TABLE fights (id uuid PRIMARY KEY, updated_at timestamp)"
out=$(psql -X -q -v ON_ERROR_STOP=1 -d "$db2" -f "$here/install.sql" 2>&1 || true)
case "$out" in *"table public.fights has no column campaign_id"*) ok "missing column: clear error" ;;
               *) fail "missing column: clear error" "$out" ;; esac
psql_ -d "$db2" -f "$here/uninstall.sql" && ok "uninstall on a database that never had pgcable"
psql_ -d postgres -c "DROP DATABASE $db2"

# ---------------------------------------------------------------------------------------------
echo "# install / uninstall are idempotent and leave the data alone"
psql_ -d postgres -c "CREATE DATABASE $db"
psql_ -d "$db" -f "$schema" >/dev/null
# Production has more columns than sql/schema.sql, some with types that have no "=" at all.
psql_ -d "$db" <<'SQL'
ALTER TABLE characters ADD COLUMN x_json json, ADD COLUMN x_point point, ADD COLUMN x_num numeric;
INSERT INTO users (id, created_at, updated_at, jti)
VALUES ('00000000-0000-4000-8000-000000000001', now(), now(), 'test');
INSERT INTO campaigns (id, user_id, name) VALUES
    ('00000000-0000-4000-8000-0000000000c1', '00000000-0000-4000-8000-000000000001', 'one'),
    ('00000000-0000-4000-8000-0000000000c2', '00000000-0000-4000-8000-000000000001', 'two');
INSERT INTO characters (id, name, created_at, updated_at, campaign_id)
VALUES ('00000000-0000-4000-8000-0000000000a0', 'Before install', now(), now(), '00000000-0000-4000-8000-0000000000c1');
SQL
triggers_count() { q -c "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgcable%' AND NOT tgisinternal"; }
snapshot() { q -c "SELECT md5(string_agg(c::text, ',' ORDER BY id)) FROM characters c"; }
before=$(snapshot)
psql_ -d "$db" -f "$here/install.sql" && psql_ -d "$db" -f "$here/install.sql" && ok "install twice"
expect "32 triggers after installing twice" 32 "$(triggers_count)"
expect "version() = 2" 2 "$(q -c 'SELECT pgcable.version()')"
psql_ -d "$db" -f "$here/uninstall.sql" && psql_ -d "$db" -f "$here/uninstall.sql" && ok "uninstall twice"
expect "no triggers after uninstall" 0 "$(triggers_count)"
expect "no schema pgcable after uninstall" "" "$(q -c "SELECT nspname FROM pg_namespace WHERE nspname = 'pgcable'")"
expect "data untouched by install/uninstall" "$before" "$(snapshot)"
psql_ -d "$db" -f "$here/install.sql" && ok "install again"
expect "32 triggers after reinstall" 32 "$(triggers_count)"
out=$(psql -X -q -d "$db" -f "$here/install.sql" 2>&1)
expect "install is quiet" "" "$out"

# ---------------------------------------------------------------------------------------------
echo "# row changes"
C1=00000000-0000-4000-8000-0000000000c1
C2=00000000-0000-4000-8000-0000000000c2
ID=00000000-0000-4000-8000-000000000101
ID2=00000000-0000-4000-8000-000000000102
R='{"k":"r","t":"characters","c":'

expect "insert" "$R[[\"i\",\"$ID\",\"$C1\",null]]}" "$(notifs <<SQL
INSERT INTO characters (id, name, created_at, updated_at, campaign_id) VALUES ('$ID', 'A', now(), now(), '$C1');
SQL
)"
expect "each payload says when its statement ran (microseconds)" 1 "$(raw_notifs <<SQL | grep -c '^{"k":"r","t":"characters","a":[0-9]\{16\},"c":'
UPDATE characters SET name = 'timed' WHERE id = '$ID';
SQL
)"
expect "update" "$R[[\"u\",\"$ID\",\"$C1\"]]}" "$(notifs <<SQL
UPDATE characters SET name = 'B' WHERE id = '$ID';
SQL
)"
expect "update of columns and updated_at" "$R[[\"u\",\"$ID\",\"$C1\"]]}" "$(notifs <<SQL
UPDATE characters SET name = 'C', updated_at = updated_at + interval '1 second' WHERE id = '$ID';
SQL
)"
expect "touch (only updated_at) of a character is an update (only fights tell touches)" "$R[[\"u\",\"$ID\",\"$C1\"]]}" "$(notifs <<SQL
UPDATE characters SET updated_at = updated_at + interval '1 second' WHERE id = '$ID';
SQL
)"
expect "no-op update sends nothing" "" "$(notifs <<SQL
UPDATE characters SET name = name, campaign_id = campaign_id WHERE id = '$ID';
UPDATE characters SET name = 'C' WHERE id = '$ID';
SQL
)"
expect "UPDATE matching no row sends nothing" "" "$(notifs <<SQL
UPDATE characters SET name = 'Z' WHERE id = '00000000-0000-4000-8000-00000000ffff';
SQL
)"
expect "update of a json column (type without =)" "$R[[\"u\",\"$ID\",\"$C1\"]]}" "$(notifs <<SQL
UPDATE characters SET x_json = '{"a": 1}', x_point = point(1, 2) WHERE id = '$ID';
SQL
)"
expect "same json and point again sends nothing" "" "$(notifs <<SQL
UPDATE characters SET x_json = '{"a": 1}', x_point = point(1, 2) WHERE id = '$ID';
SQL
)"
expect "jsonb set" "$R[[\"u\",\"$ID\",\"$C1\"]]}" "$(notifs <<SQL
UPDATE characters SET action_values = '{"b": 2, "a": 1}' WHERE id = '$ID';
SQL
)"
expect "jsonb rewritten as different text with an equal value sends nothing" "" "$(notifs <<SQL
UPDATE characters SET action_values = '{"a":1,"b":2}' WHERE id = '$ID';
SQL
)"
expect "campaign move" "$R[[\"u\",\"$ID\",\"$C2\",\"$C1\"]]}" "$(notifs <<SQL
UPDATE characters SET campaign_id = '$C2' WHERE id = '$ID';
SQL
)"
expect "campaign to NULL" "$R[[\"u\",\"$ID\",null,\"$C2\"]]}" "$(notifs <<SQL
UPDATE characters SET campaign_id = NULL WHERE id = '$ID';
SQL
)"
expect "touch of a row without campaign" "$R[[\"u\",\"$ID\",null]]}" "$(notifs <<SQL
UPDATE characters SET updated_at = updated_at + interval '1 second' WHERE id = '$ID';
SQL
)"
expect "campaign from NULL" "$R[[\"u\",\"$ID\",\"$C2\",null]]}" "$(notifs <<SQL
UPDATE characters SET campaign_id = '$C2' WHERE id = '$ID';
SQL
)"
expect_any "primary key change = delete old + insert new" "$(notifs <<SQL
UPDATE characters SET id = '$ID2' WHERE id = '$ID';
SQL
)" "$R[[\"d\",\"$ID\",null,\"$C2\"],[\"i\",\"$ID2\",\"$C2\",null]]}" \
   "$R[[\"i\",\"$ID2\",\"$C2\",null],[\"d\",\"$ID\",null,\"$C2\"]]}"
expect "delete" "$R[[\"d\",\"$ID2\",null,\"$C2\"]]}" "$(notifs <<SQL
DELETE FROM characters WHERE id = '$ID2';
SQL
)"
expect "insert and delete without campaign" "$R[[\"i\",\"$ID\",null]]}
$R[[\"d\",\"$ID\",null]]}" "$(notifs <<SQL
INSERT INTO characters (id, name, created_at, updated_at) VALUES ('$ID', 'A', now(), now());
DELETE FROM characters WHERE id = '$ID';
SQL
)"
expect "rolled-back transaction sends nothing" "" "$(notifs <<SQL
BEGIN;
INSERT INTO characters (id, name, created_at, updated_at, campaign_id) VALUES ('$ID', 'A', now(), now(), '$C1');
UPDATE characters SET name = 'X' WHERE id = '00000000-0000-4000-8000-0000000000a0';
SELECT pgcable.broadcast('campaign_$C1', '{"a": 1}');
ROLLBACK;
SQL
)"
expect "rolled-back savepoint sends nothing, the rest commits" "$R[[\"i\",\"$ID\",\"$C1\",null]]}" "$(notifs <<SQL
BEGIN;
INSERT INTO characters (id, name, created_at, updated_at, campaign_id) VALUES ('$ID', 'A', now(), now(), '$C1');
SAVEPOINT s;
UPDATE characters SET name = 'X' WHERE id = '$ID';
ROLLBACK TO SAVEPOINT s;
COMMIT;
SQL
)"
expect "one transaction, several statements: one NOTIFY per statement, in order" \
    "$R[[\"u\",\"$ID\",\"$C1\"]]}
$R[[\"u\",\"$ID\",null,\"$C1\"]]}
$R[[\"u\",\"$ID\",\"$C2\",null]]}" "$(notifs <<SQL
BEGIN;
UPDATE characters SET name = 'X' WHERE id = '$ID';
UPDATE characters SET campaign_id = NULL WHERE id = '$ID';
UPDATE characters SET campaign_id = '$C2', updated_at = updated_at + interval '1 second' WHERE id = '$ID';
COMMIT;
SQL
)"
expect "identical row payloads in one transaction are folded by Postgres" "$R[[\"u\",\"$ID\",\"$C2\"]]}" "$(notifs <<SQL
BEGIN;
UPDATE characters SET name = 'Y' WHERE id = '$ID';
UPDATE characters SET name = 'Z' WHERE id = '$ID';
COMMIT;
SQL
)"
expect "INSERT .. ON CONFLICT DO UPDATE" "$R[[\"u\",\"$ID\",\"$C2\"]]}" "$(notifs <<SQL
INSERT INTO characters (id, name, created_at, updated_at, campaign_id) VALUES ('$ID', 'A', now(), now(), '$C2')
ON CONFLICT (id) DO UPDATE SET name = 'W';
SQL
)"
A0=00000000-0000-4000-8000-0000000000a0
expect_any "multi-row statement, one payload" "$(notifs <<SQL
UPDATE characters SET campaign_id = '$C1', name = name || '.' WHERE id IN ('$ID', '$A0');
SQL
)" "$R[[\"u\",\"$ID\",\"$C1\",\"$C2\"],[\"u\",\"$A0\",\"$C1\"]]}" \
   "$R[[\"u\",\"$A0\",\"$C1\"],[\"u\",\"$ID\",\"$C1\",\"$C2\"]]}"
if [ "$(q -c 'SHOW server_version_num')" -ge 150000 ]; then
    expect_any "MERGE (insert + update in one statement)" "$(notifs <<SQL
MERGE INTO characters c
USING (VALUES ('$ID'::uuid, 'M1'), ('$ID2'::uuid, 'M2')) AS v(id, name) ON c.id = v.id
WHEN MATCHED THEN UPDATE SET name = v.name
WHEN NOT MATCHED THEN INSERT (id, name, created_at, updated_at, campaign_id) VALUES (v.id, v.name, now(), now(), '$C1');
DELETE FROM characters WHERE id = '$ID2';
SQL
)" "$R[[\"i\",\"$ID2\",\"$C1\",null]]}
$R[[\"u\",\"$ID\",\"$C1\"]]}
$R[[\"d\",\"$ID2\",null,\"$C1\"]]}" "$R[[\"u\",\"$ID\",\"$C1\"]]}
$R[[\"i\",\"$ID2\",\"$C1\",null]]}
$R[[\"d\",\"$ID2\",null,\"$C1\"]]}"
fi
V=00000000-0000-4000-8000-000000000201
F=00000000-0000-4000-8000-000000000301
expect "vehicles" "{\"k\":\"r\",\"t\":\"vehicles\",\"c\":[[\"i\",\"$V\",\"$C1\",null]]}
{\"k\":\"r\",\"t\":\"vehicles\",\"c\":[[\"u\",\"$V\",\"$C1\"]]}
{\"k\":\"r\",\"t\":\"vehicles\",\"c\":[[\"d\",\"$V\",null,\"$C1\"]]}" "$(notifs <<SQL
INSERT INTO vehicles (id, name, action_values, created_at, updated_at, campaign_id) VALUES ('$V', 'Taxi', '{}', now(), now(), '$C1');
UPDATE vehicles SET updated_at = updated_at + interval '1 second';
DELETE FROM vehicles;
SQL
)"
expect "fights" "{\"k\":\"r\",\"t\":\"fights\",\"c\":[[\"i\",\"$F\",\"$C1\",null]]}
{\"k\":\"r\",\"t\":\"fights\",\"c\":[[\"u\",\"$F\",\"$C1\"]]}
{\"k\":\"r\",\"t\":\"fights\",\"c\":[[\"t\",\"$F\",\"$C1\"]]}
{\"k\":\"r\",\"t\":\"fights\",\"c\":[[\"d\",\"$F\",null,\"$C1\"]]}" "$(notifs <<SQL
INSERT INTO fights (id, name, created_at, updated_at, campaign_id) VALUES ('$F', 'Fight', now(), now(), '$C1');
UPDATE fights SET sequence = 2, updated_at = now();
UPDATE fights SET updated_at = updated_at + interval '1 second';
DELETE FROM fights;
SQL
)"
# TRUNCATE ... CASCADE reaches the tables that reference fights (shots, then their effects and
# chase relationships): each truncated table sends its own payload, in no fixed order.
expect "TRUNCATE: one payload per truncated table, no rows" '{"k":"x","t":"character_effects"}
{"k":"x","t":"chase_relationships"}
{"k":"x","t":"fights"}
{"k":"x","t":"shots"}' "$(notifs <<SQL | sort
TRUNCATE fights CASCADE;
SQL
)"
expect "TRUNCATE of one table (and what references it)" '{"k":"x","t":"character_effects"}
{"k":"x","t":"chase_relationships"}
{"k":"x","t":"shots"}
{"k":"x","t":"vehicles"}' "$(notifs <<SQL | sort
TRUNCATE vehicles CASCADE;
SQL
)"

# ---------------------------------------------------------------------------------------------
echo "# live combat: fights that end, and the fights that shots, effects and chases touch"
FA=00000000-0000-4000-8000-000000000401
FB=00000000-0000-4000-8000-000000000402
CH=00000000-0000-4000-8000-000000000501
VE=00000000-0000-4000-8000-000000000502
S1=00000000-0000-4000-8000-000000000601
S2=00000000-0000-4000-8000-000000000602
S3=00000000-0000-4000-8000-000000000603
FR='{"k":"r","t":"fights","c":'
psql_ -d "$db" <<SQL
INSERT INTO fights (id, name, created_at, updated_at, campaign_id, started_at) VALUES
    ('$FA', 'A', now(), now(), '$C1', now()), ('$FB', 'B', now(), now(), '$C1', now());
INSERT INTO characters (id, name, created_at, updated_at, campaign_id) VALUES ('$CH', 'Hero', now(), now(), '$C1');
INSERT INTO vehicles (id, name, action_values, created_at, updated_at, campaign_id) VALUES ('$VE', 'Cab', '{}', now(), now(), '$C1');
SQL
expect "fight ends: the entry carries its old campaign and \"e\"" "$FR[[\"u\",\"$FA\",\"$C1\",\"$C1\",\"e\"]]}" "$(notifs <<SQL
UPDATE fights SET ended_at = now() WHERE id = '$FA';
SQL
)"
expect "an ended fight changed again is a plain update" "$FR[[\"u\",\"$FA\",\"$C1\"]]}" "$(notifs <<SQL
UPDATE fights SET ended_at = ended_at + interval '1 second' WHERE id = '$FA';
SQL
)"
expect "un-ending and starting are plain updates" "$FR[[\"u\",\"$FA\",\"$C1\"]]}
$FR[[\"u\",\"$FB\",\"$C1\"]]}" "$(notifs <<SQL
UPDATE fights SET ended_at = NULL WHERE id = '$FA';
UPDATE fights SET started_at = now() + interval '1 second' WHERE id = '$FB';
SQL
)"
H='{"k":"f","c":'
expect "shot insert names its fight" "$H[[\"$FA\"]]}" "$(notifs <<SQL
INSERT INTO shots (id, fight_id, character_id, shot, created_at, updated_at) VALUES
    ('$S1', '$FA', '$CH', 10, now(), now()), ('$S2', '$FA', NULL, 8, now(), now());
SQL
)"
expect "each statement names each fight once" "$H[[\"$FA\"]]}" "$(notifs <<SQL
UPDATE shots SET shot = shot - 1 WHERE fight_id = '$FA';
SQL
)"
# fight_ids of one statement, sorted, on one line
fight_ids() { grep -o '\["[^]]*"\]' | sort | tr '\n' ' ' | sed 's/ $//'; }
expect "a shot moved between fights names both" "[\"$FA\"] [\"$FB\"]" "$(notifs <<SQL | fight_ids
UPDATE shots SET fight_id = '$FB' WHERE id = '$S2';
SQL
)"
expect "a no-op shot update sends nothing" "" "$(notifs <<SQL
UPDATE shots SET shot = shot;
SQL
)"
# (chase_relationships.evader_id references both shots and vehicles, as in production: the
# evader's shot has the vehicle's id)
expect "a vehicle shot, its effect (through the shot), a chase" "$H[[\"$FB\"]]}
$H[[\"$FB\"]]}
$H[[\"$FB\"]]}
$H[[\"$FB\"]]}" "$(notifs <<SQL
INSERT INTO shots (id, fight_id, vehicle_id, shot, created_at, updated_at) VALUES ('$S3', '$FB', '$VE', 5, now(), now()), ('$VE', '$FB', '$VE', 4, now(), now());
INSERT INTO character_effects (id, character_id, shot_id, name, created_at, updated_at) VALUES ('00000000-0000-4000-8000-000000000701', '$CH', '$S3', 'Dazed', now(), now());
INSERT INTO chase_relationships (id, pursuer_id, evader_id, fight_id, created_at, updated_at) VALUES ('00000000-0000-4000-8000-000000000801', '$S3', '$VE', '$FB', now(), now());
UPDATE character_effects SET severity = 'error';
SQL
)"
expect "an effect moved to a shot of another fight names both" "[\"$FA\"] [\"$FB\"]" "$(notifs <<SQL | fight_ids
UPDATE character_effects SET shot_id = '$S1';
SQL
)"
expect "deleting a shot names its fight once (its effects went with it)" "$H[[\"$FB\"]]}
$H[[\"$FA\"]]}" "$(notifs <<SQL
DELETE FROM chase_relationships;
DELETE FROM shots WHERE id = '$S1';
SQL
)"
# Postgres folds identical payloads of one transaction, so equal hints may arrive once.
out=$(notifs <<SQL
BEGIN;
INSERT INTO shots (fight_id, shot, created_at, updated_at) SELECT f, g, now(), now() FROM generate_series(1, 500) g, (VALUES ('$FA'::uuid), ('$FB'::uuid)) v(f);
UPDATE shots SET count = count + 1;
DELETE FROM shots;
COMMIT;
SQL
)
expect "one transaction, 1,000 shots of two fights: both fights named" "[\"$FA\"] [\"$FB\"]" "$(fight_ids <<<"$out" | tr ' ' '\n' | sort -u | tr '\n' ' ' | sed 's/ $//')"
n=$(grep -c '"k":"f"' <<<"$out")
if [ "$n" -ge 1 ] && [ "$n" -le 3 ]; then ok "... in at most one hint per statement ($n)"; else fail "... in at most one hint per statement" "$out"; fi

# ---------------------------------------------------------------------------------------------
echo "# live authorization: memberships, campaigns and users"
UA=00000000-0000-4000-8000-0000000000a1
UB=00000000-0000-4000-8000-0000000000a2
CA=00000000-0000-4000-8000-0000000000ca
psql_ -d "$db" <<SQL
INSERT INTO users (id, email, jti, created_at, updated_at) VALUES ('$UA', 'a@example.com', 'ja', now(), now()), ('$UB', 'b@example.com', 'jb', now(), now());
SQL
A='{"k":"a","c":'
expect "a new campaign grants its owner" "$A[[\"g\",\"$UA\",\"$CA\"]]}" "$(notifs <<SQL
INSERT INTO campaigns (id, user_id, name, created_at, updated_at) VALUES ('$CA', '$UA', 'c', now(), now());
SQL
)"
expect "a new membership grants" "$A[[\"g\",\"$UB\",\"$CA\"]]}" "$(notifs <<SQL
INSERT INTO campaign_memberships (user_id, campaign_id) VALUES ('$UB', '$CA');
SQL
)"
expect "a membership touched: nothing" "" "$(notifs <<SQL
UPDATE campaign_memberships SET updated_at = now();
SQL
)"
expect "a membership moved to another user: one loses, one gains" "$A[[\"g\",\"$UA\",\"$CA\"],[\"r\",\"$UB\",\"$CA\"]]}" "$(notifs <<SQL
UPDATE campaign_memberships SET user_id = '$UA';
SQL
)"
expect "a membership deleted: revoked" "$A[[\"r\",\"$UA\",\"$CA\"]]}" "$(notifs <<SQL
DELETE FROM campaign_memberships;
SQL
)"
expect "a campaign renamed: nothing" "" "$(notifs <<SQL
UPDATE campaigns SET name = 'renamed' WHERE id = '$CA';
SQL
)"
expect_any "ownership transferred: old owner loses, new owner gains" "$(notifs <<SQL
UPDATE campaigns SET user_id = '$UB' WHERE id = '$CA';
SQL
)" "$A[[\"r\",\"$UA\",\"$CA\"],[\"g\",\"$UB\",\"$CA\"]]}" "$A[[\"g\",\"$UB\",\"$CA\"],[\"r\",\"$UA\",\"$CA\"]]}"
expect "user flags: admin gained and jti rotated, then admin lost and deactivated" "$A[[\"u\",\"$UA\",\"Aj\"]]}
$A[[\"u\",\"$UA\",\"ai\"]]}" "$(notifs <<SQL
UPDATE users SET admin = true, jti = 'rotated' WHERE id = '$UA';
UPDATE users SET admin = false, active = false WHERE id = '$UA';
SQL
)"
expect "a user renamed: nothing" "" "$(notifs <<SQL
UPDATE users SET first_name = 'New', updated_at = now();
SQL
)"
expect "campaign deleted, user deleted" "$A[[\"c\",\"$CA\"]]}
$A[[\"u\",\"$UA\",\"x\"]]}" "$(notifs <<SQL
DELETE FROM campaigns WHERE id = '$CA';
DELETE FROM users WHERE id = '$UA';
SQL
)"

# ---------------------------------------------------------------------------------------------
echo "# bulk statements are batched"
# check_bulk NAME ACTION MAX_NOTIFYS: payloads of the last notifs run, in $work/bulk.txt
check_bulk() {
    local name="$1" action="$2" max="$3" res
    res=$(psql -X -q -At -v ON_ERROR_STOP=1 -d "$db" <<SQL
CREATE TEMP TABLE p (payload text);
\copy p FROM '$work/bulk.txt'
SELECT count(*) || ' ' || max(octet_length(payload)) || ' ' || sum(jsonb_array_length(payload::jsonb -> 'c'))
       || ' ' || (SELECT count(DISTINCT e ->> 1) || ' ' || count(*) FILTER (WHERE e ->> 0 <> '$action')
                    FROM p, jsonb_array_elements(payload::jsonb -> 'c') e)
  FROM p;
SQL
)
    read -r n maxlen entries distinct wrong <<<"$res"
    echo "     $name: $n NOTIFYs, largest $maxlen bytes, $entries entries"
    expect "$name: 10000 entries, 10000 distinct ids, all '$action'" "10000 10000 0" "$entries $distinct $wrong"
    if [ "$maxlen" -lt 7000 ]; then ok "$name: every payload < 7000 bytes"; else fail "$name: payload of $maxlen bytes"; fi
    if [ "$n" -le "$max" ]; then ok "$name: $n NOTIFYs (<= $max)"; else fail "$name: $n NOTIFYs, want <= $max"; fi
}
notifs >"$work/bulk.txt" <<SQL
INSERT INTO characters (id, name, created_at, updated_at, campaign_id)
SELECT md5(g::text)::uuid, 'Bulk ' || g, now(), now(), '$C1' FROM generate_series(1, 10000) g;
SQL
check_bulk "bulk insert" i 135
notifs >"$work/bulk.txt" <<SQL
UPDATE characters SET impairments = 1 WHERE name LIKE 'Bulk %';
SQL
check_bulk "bulk update" u 125
notifs >"$work/bulk.txt" <<SQL
UPDATE characters SET updated_at = updated_at + interval '1 second' WHERE name LIKE 'Bulk %';
SQL
check_bulk "bulk touch" u 125
# the longest entries: 4 uuids' worth
notifs >"$work/bulk.txt" <<SQL
UPDATE characters SET campaign_id = '$C2' WHERE name LIKE 'Bulk %';
SQL
check_bulk "bulk campaign move" u 185
notifs >"$work/bulk.txt" <<SQL
DELETE FROM characters WHERE name LIKE 'Bulk %';
SQL
check_bulk "bulk delete" d 135

# ---------------------------------------------------------------------------------------------
echo "# broadcast / disconnect"
expect "broadcast inline, with a nonce" '{"k":"b","s":"campaign_x","n":N,"m":{"a": [1, 2.50], "b": "<\"é\">"}}' \
    "$(notifs <<'SQL' | sed 's/"n":[0-9]*/"n":N/'
SELECT pgcable.broadcast('campaign_x', '{"b": "<\"é\">", "a": [1, 2.50]}');
SQL
)"
out=$(notifs <<'SQL'
BEGIN;
SELECT pgcable.broadcast('campaign_x', '{"a": 1}');
SELECT pgcable.broadcast('campaign_x', '{"a": 1}');
COMMIT;
SQL
)
expect "two identical broadcasts in one transaction: two NOTIFYs" 2 "$(grep -c '"k":"b"' <<<"$out")"
expect "... that differ only in the nonce" 1 "$(sed 's/"n":[0-9]*/"n":N/' <<<"$out" | sort -u | wc -l)"

out=$(notifs <<'SQL'
SELECT pgcable.broadcast('big', to_jsonb(repeat('x', 6930)));
SELECT pgcable.broadcast('big', to_jsonb(repeat('x', 6990)));
SQL
)
expect "payload just under 7000 bytes goes inline" 1 "$(grep -c '"k":"b","s":"big"' <<<"$out")"
expect "payload just over 7000 bytes goes via pgcable.messages" 1 "$(grep -c '^{"k":"t","id":[0-9]*}$' <<<"$out")"
for size in 1048576 10485760; do
    out=$(notifs <<SQL
SELECT pgcable.broadcast('campaign_$C1', jsonb_build_object('blob', repeat('y', $size)));
SQL
)
    id=$(sed -n 's/^{"k":"t","id":\([0-9]*\)}$/\1/p' <<<"$out")
    if [ -n "$id" ]; then
        expect "$size-byte broadcast goes via pgcable.messages" "campaign_$C1 $size" \
            "$(q -c "SELECT stream || ' ' || length(message ->> 'blob') FROM pgcable.messages WHERE id = $id")"
    else
        fail "$size-byte broadcast goes via pgcable.messages" "$out"
    fi
done
expect "rolled-back big broadcast leaves no row" 0 "$(q -c "BEGIN" -c "SELECT pgcable.broadcast('s', to_jsonb(repeat('z', 9000)))" \
    -c "ROLLBACK" -c "SELECT count(*) FROM pgcable.messages WHERE message = to_jsonb(repeat('z', 9000))" | tail -1)"
out=$(psql -X -q -d "$db" -c "SELECT pgcable.broadcast(NULL, '{}')" 2>&1 || true)
case "$out" in *"must not be NULL"*) ok "broadcast(NULL, ..) is an error" ;; *) fail "broadcast(NULL, ..) is an error" "$out" ;; esac
U=00000000-0000-4000-8000-000000000001
expect "disconnect" "{\"k\":\"d\",\"u\":\"$U\",\"r\":true}
{\"k\":\"d\",\"u\":\"$U\",\"r\":false}" "$(notifs <<SQL
SELECT pgcable.disconnect('$U');
SELECT pgcable.disconnect('$U', false);
SQL
)"

# ---------------------------------------------------------------------------------------------
echo "# a writer with no rights on schema pgcable's objects"
psql_ -d "$db" <<SQL
CREATE ROLE $writer LOGIN;
GRANT SELECT, INSERT, UPDATE, DELETE ON characters TO $writer;
SQL
expect "writer's UPDATE fires the trigger" "$R[[\"u\",\"$ID\",\"$C1\"]]}" "$(notifs -U "$writer" <<SQL
UPDATE characters SET name = 'By writer' WHERE id = '$ID';
SQL
)"
out=$(notifs -U "$writer" <<SQL
SELECT pgcable.broadcast('campaign_$C1', jsonb_build_object('blob', repeat('w', 100000)));
SQL
)
case "$out" in '{"k":"t","id":'*) ok "writer can broadcast a big message (SECURITY DEFINER)" ;;
               *) fail "writer can broadcast a big message (SECURITY DEFINER)" "$out" ;; esac
out=$(psql -X -q -d "$db" -U "$writer" -c "INSERT INTO pgcable.messages (stream, message) VALUES ('s', '{}')" 2>&1 || true)
case "$out" in *"permission denied"*) ok "writer cannot write pgcable.messages directly" ;;
               *) fail "writer cannot write pgcable.messages directly" "$out" ;; esac

# ---------------------------------------------------------------------------------------------
echo "# uninstall keeps the data"
before=$(snapshot)
psql_ -d "$db" -f "$here/uninstall.sql"
expect "data untouched by uninstall" "$before" "$(snapshot)"
expect "no NOTIFY once uninstalled" "" "$(notifs <<SQL
UPDATE characters SET name = 'After' WHERE id = '$ID';
SQL
)"

echo
echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
