-- triggers/install.sql: pgcable change-feed triggers, version 2.
--
-- Installs schema `pgcable` and statement-level triggers that NOTIFY channel `pgcable` with
-- identifiers of the changed rows (never row data): row changes of public.characters,
-- public.vehicles and public.fights, the fights whose live combat state may have changed
-- through public.shots, public.character_effects and public.chase_relationships, and whose
-- access may have changed through public.campaign_memberships, public.campaigns and
-- public.users. See
-- triggers/README.md for the payload contract, the cost and how to install.
--
-- Plain SQL, no psql meta-commands, so it can be run by psql (-f), by a Rails migration
-- (execute File.read(...)) or by a client's simple-query "batch execute".
-- Idempotent: run it again to upgrade or repair; it never touches the tables' data.
-- Transactional: it either installs everything or nothing.

BEGIN;

-- Keep psql quiet about "already exists, skipping" and the like.
SET LOCAL client_min_messages = warning;

-- Creating a trigger locks its table against writes. Fail instead of queueing behind a long
-- transaction (and making every writer queue behind us). Just run it again later.
SET LOCAL lock_timeout = '10s';

-- The watched tables must exist and have the columns the triggers read (each list: the table,
-- then its columns; every column but updated_at, jti and admin must be a uuid).
DO $check$
DECLARE
    spec text[];
    tbl text;
    col text;
    kind "char";
    typ pg_catalog.regtype;
BEGIN
    FOREACH spec SLICE 1 IN ARRAY ARRAY[
        ARRAY['characters', 'id', 'campaign_id', 'updated_at'],
        ARRAY['vehicles', 'id', 'campaign_id', 'updated_at'],
        ARRAY['fights', 'id', 'campaign_id', 'updated_at'],
        -- (padded to four with a second 'id': a plpgsql array must be rectangular)
        ARRAY['shots', 'id', 'fight_id', 'id'],
        ARRAY['character_effects', 'id', 'shot_id', 'id'],
        ARRAY['chase_relationships', 'id', 'fight_id', 'id'],
        ARRAY['campaign_memberships', 'id', 'user_id', 'campaign_id'],
        ARRAY['campaigns', 'id', 'user_id', 'id'],
        ARRAY['users', 'id', 'jti', 'admin']
    ] LOOP
        tbl := spec[1];
        SELECT c.relkind INTO kind
          FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace
         WHERE s.nspname = 'public' AND c.relname = tbl;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'pgcable install: table public.% does not exist', tbl
                USING HINT = 'pgcable needs the application tables characters, vehicles, fights, shots, character_effects and chase_relationships; load the application schema first.';
        END IF;
        IF kind NOT IN ('r', 'p') THEN
            RAISE EXCEPTION 'pgcable install: public.% is not a table (relkind %)', tbl, kind;
        END IF;
        FOREACH col IN ARRAY spec[2:] LOOP
            SELECT a.atttypid INTO typ
               FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = pg_catalog.format('public.%I', tbl)::pg_catalog.regclass
                AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'pgcable install: table public.% has no column %', tbl, col;
            END IF;
            IF col NOT IN ('updated_at', 'jti', 'admin') AND typ <> 'uuid'::pg_catalog.regtype THEN
                RAISE EXCEPTION 'pgcable install: public.%.% is of type %, expected uuid', tbl, col, typ;
            END IF;
        END LOOP;
    END LOOP;
END
$check$;

CREATE SCHEMA IF NOT EXISTS pgcable;
COMMENT ON SCHEMA pgcable IS
    'pgcable change-feed relay: NOTIFY triggers and helpers. Installed by triggers/install.sql; remove with triggers/uninstall.sql.';

-- Makes every inline broadcast payload unique, so that Postgres does not fold two identical
-- broadcasts of one transaction into one notification.
CREATE SEQUENCE IF NOT EXISTS pgcable.nonce AS bigint;

-- Broadcasts too large for a NOTIFY payload. The relay reads them by id and deletes old rows.
CREATE TABLE IF NOT EXISTS pgcable.messages (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream     text        NOT NULL,
    message    jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS messages_created_at_idx ON pgcable.messages (created_at);

-- The trigger version. The relay compares it with the version it was built for.
CREATE OR REPLACE FUNCTION pgcable.version() RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT 2 $$;

-- pgcable.broadcast(stream, message): send `message` to every subscriber of ActionCable stream
-- `stream`, once the calling transaction commits (nothing is sent if it rolls back).
CREATE OR REPLACE FUNCTION pgcable.broadcast(stream text, message jsonb) RETURNS void
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pgcable, pg_temp
    AS $$
DECLARE
    payload text;
    msg_id bigint;
BEGIN
    IF stream IS NULL OR message IS NULL THEN
        RAISE EXCEPTION 'pgcable.broadcast: stream and message must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    payload := '{"k":"b","s":' || pg_catalog.to_json(stream)::text
            || ',"n":' || pg_catalog.nextval('pgcable.nonce'::pg_catalog.regclass)::text
            || ',"a":' || (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000000)::bigint::text
            || ',"m":' || message::text || '}';
    -- Postgres rejects NOTIFY payloads of 8000 bytes or more (failing the transaction); stay
    -- well below and hand anything larger over through a table.
    IF pg_catalog.octet_length(payload) < 7000 THEN
        PERFORM pg_catalog.pg_notify('pgcable', payload);
    ELSE
        INSERT INTO pgcable.messages (stream, message) VALUES (stream, message)
            RETURNING id INTO msg_id;
        PERFORM pg_catalog.pg_notify('pgcable', '{"k":"t","id":' || msg_id::text || ',"a":' || (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000000)::bigint::text || '}');
    END IF;
END
$$;

-- pgcable.disconnect(user_id, reconnect): close every ActionCable connection of that user once
-- the calling transaction commits.
CREATE OR REPLACE FUNCTION pgcable.disconnect(user_id uuid, reconnect boolean DEFAULT true) RETURNS void
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pgcable, pg_temp
    AS $$
BEGIN
    IF user_id IS NULL OR reconnect IS NULL THEN
        RAISE EXCEPTION 'pgcable.disconnect: user_id and reconnect must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM pg_catalog.pg_notify('pgcable',
        '{"k":"d","u":"' || user_id::text || '","r":' || CASE WHEN reconnect THEN 'true' ELSE 'false' END || '}');
END
$$;

-- Sends `head || entries || ']}'` on channel pgcable, cut into several payloads of whole
-- entries when it would reach 7000 bytes (Postgres fails the writer's transaction at 8000).
-- `body` is comma-separated entries, each a JSON array of ASCII text ending in ']'.
CREATE OR REPLACE FUNCTION pgcable.notify_entries(head text, body text) RETURNS void
    LANGUAGE plpgsql VOLATILE
    AS $$
DECLARE
    budget integer := 6990 - pg_catalog.octet_length(head) - 2;  -- most bytes of entries a payload carries
    bytes bytea;
    pos integer;
    piece text;
BEGIN
    IF pg_catalog.octet_length(body) <= budget THEN
        PERFORM pg_catalog.pg_notify('pgcable', head || body || ']}');
        RETURN;
    END IF;
    -- Cut after the last whole entry that fits: every ']' in body ends an entry. Cut as bytea,
    -- where substr is O(1) (text substr has to count characters from the start).
    bytes := pg_catalog.convert_to(body, 'UTF8');
    pos := 1;
    WHILE pos <= pg_catalog.length(bytes) LOOP
        piece := pg_catalog.convert_from(pg_catalog.substr(bytes, pos, budget), 'UTF8');
        IF pos + budget <= pg_catalog.length(bytes) THEN  -- not the tail: end at an entry's end
            piece := pg_catalog.substr(piece, 1, budget + 1 - pg_catalog.strpos(pg_catalog.reverse(piece), ']'));
        END IF;
        PERFORM pg_catalog.pg_notify('pgcable', head || piece || ']}');
        pos := pos + pg_catalog.octet_length(piece) + 1;  -- and the comma
    END LOOP;
END
$$;

-- The row-change trigger function of characters, vehicles and fights: AFTER ... FOR EACH
-- STATEMENT, with transition tables named pgcable_old / pgcable_new. One statement's changes to
-- one table become one NOTIFY
--   {"k":"r","t":"<table>","c":[[action, id, new campaign_id, old campaign_id(, "e")], ...]}
-- or, for big statements, several, each under 7000 bytes. The 4th element is left out when it
-- equals the 3rd and no 5th follows. Actions: i insert, u update, t update of updated_at only
-- ("touch"; fights only, other tables report a touch as u), d delete. A 5th element "e" marks a
-- fight whose ended_at went from NULL to a value (the fight ended).
-- An UPDATE that leaves a row byte-for-byte unchanged sends nothing; one that changes a row's id
-- is sent as d of the old id plus i of the new one.
--
-- No SET search_path here (it costs a few % of a one-row UPDATE): the function runs with the
-- writer's own rights, calls only pg_catalog and pgcable functions by qualified name, and the
-- transition tables' names are resolved before any schema is searched.
CREATE OR REPLACE FUNCTION pgcable.row_changes() RETURNS trigger
    LANGUAGE plpgsql VOLATILE
    AS $$
DECLARE
    -- "a": when the transaction started, in microseconds since the epoch (the relay's
    -- commit-to-send latency metric starts there). The transaction's start rather than the
    -- statement's, so that Postgres still folds identical payloads of one transaction.
    head text := '{"k":"r","t":"' || TG_TABLE_NAME || '","a":' || (pg_catalog.date_part('epoch', pg_catalog.now()) * 1000000)::bigint::text || ',"c":[';
    body text;      -- the entries, comma-separated
BEGIN
    -- Entries are built as text. ids are uuids (install.sql checks), so no JSON escaping is
    -- needed and no entry contains a bracket.
    IF TG_OP = 'UPDATE' THEN
        -- Old and new rows are paired by id. `*=` compares the rows' stored bytes: it works for
        -- every column type (json, point, ... have no `=`) and never calls a changed row equal.
        -- Only for fights (the relay treats a touch like an update everywhere else), and only
        -- when a row changed and so did updated_at, the row is compared again with updated_at
        -- put back to its old value, to tell a touch from a real update; and its ended_at is
        -- looked at, through jsonb because this function also serves tables without that
        -- column. Skipping both elsewhere saves about a tenth of a bulk UPDATE's time: Rails
        -- sets updated_at in every update.
        -- Keep the FULL JOIN: plpgsql caches this plan as made for the first statement's row
        -- counts, and a full join can only be a hash or merge join, never a nested loop that
        -- a later 10,000-row statement would run in quadratic time.
        SELECT pg_catalog.string_agg(
                   '["' || c.action || '","' || c.id::text || '",'
                   || COALESCE('"' || c.new_cid::text || '"', 'null')
                   || CASE WHEN c.ended THEN ',' || COALESCE('"' || c.old_cid::text || '"', 'null') || ',"e"]'
                           WHEN c.new_cid IS NOT DISTINCT FROM c.old_cid THEN ']'
                           ELSE ',' || COALESCE('"' || c.old_cid::text || '"', 'null') || ']' END,
                   ',')
          INTO body
          FROM (SELECT CASE
                           WHEN o.id IS NULL THEN 'i'
                           WHEN n.id IS NULL THEN 'd'
                           WHEN TG_TABLE_NAME = 'fights'
                                AND o.updated_at IS DISTINCT FROM n.updated_at
                                AND pg_catalog.jsonb_populate_record(
                                        n.*, pg_catalog.jsonb_build_object('updated_at', o.updated_at))
                                    OPERATOR(pg_catalog.*=) o.*
                                THEN 't'
                           ELSE 'u'
                       END AS action,
                       CASE WHEN TG_TABLE_NAME = 'fights' AND o.id IS NOT NULL AND n.id IS NOT NULL
                            THEN (pg_catalog.to_jsonb(o.*) OPERATOR(pg_catalog.->) 'ended_at') = 'null'::jsonb
                                 AND (pg_catalog.to_jsonb(n.*) OPERATOR(pg_catalog.->) 'ended_at') <> 'null'::jsonb
                            ELSE false
                       END AS ended,
                       COALESCE(n.id, o.id) AS id, n.campaign_id AS new_cid, o.campaign_id AS old_cid
                  FROM pgcable_old o FULL JOIN pgcable_new n ON o.id = n.id
                 WHERE o.id IS NULL OR n.id IS NULL OR NOT (n.* OPERATOR(pg_catalog.*=) o.*)) c;
    ELSIF TG_OP = 'INSERT' THEN
        SELECT pg_catalog.string_agg(
                   '["i","' || n.id::text || '",'
                   || CASE WHEN n.campaign_id IS NULL THEN 'null]'
                           ELSE '"' || n.campaign_id::text || '",null]' END,
                   ',')
          INTO body
          FROM pgcable_new n;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT pg_catalog.string_agg(
                   '["d","' || o.id::text || '",null'
                   || CASE WHEN o.campaign_id IS NULL THEN ']'
                           ELSE ',"' || o.campaign_id::text || '"]' END,
                   ',')
          INTO body
          FROM pgcable_old o;
    END IF;

    IF body IS NOT NULL THEN  -- some row changed
        PERFORM pgcable.notify_entries(head, body);
    END IF;
    RETURN NULL;
END
$$;

-- The live-combat trigger function of shots, character_effects and chase_relationships: which
-- fights one statement may have changed the encounter of. One NOTIFY (or several, each under
-- 7000 bytes)
--   {"k":"f","a":<µs>,"c":[["<fight id>"], ...]}
-- lists each such fight once: for shots and chase_relationships the fight_id of every inserted,
-- deleted or changed row, before and after; for character_effects the fight of the row's shot
-- (an effect whose shot is gone went with its shot, whose own trigger names the fight). The
-- relay re-renders the fights that are active; an UPDATE that changes no stored byte sends
-- nothing.
CREATE OR REPLACE FUNCTION pgcable.fight_changes() RETURNS trigger
    LANGUAGE plpgsql VOLATILE
    AS $$
DECLARE
    head text := '{"k":"f","a":' || (pg_catalog.date_part('epoch', pg_catalog.now()) * 1000000)::bigint::text || ',"c":[';
    body text;
BEGIN
    IF TG_TABLE_NAME = 'character_effects' THEN
        IF TG_OP = 'UPDATE' THEN
            SELECT pg_catalog.string_agg('["' || d.fight_id::text || '"]', ',') INTO body
              FROM (SELECT DISTINCT s.fight_id
                      FROM pgcable_old o FULL JOIN pgcable_new n ON o.id = n.id
                     CROSS JOIN LATERAL (VALUES (o.shot_id), (n.shot_id)) v(shot_id)
                      JOIN public.shots s ON s.id = v.shot_id
                     WHERE o.id IS NULL OR n.id IS NULL OR NOT (n.* OPERATOR(pg_catalog.*=) o.*)) d;
        ELSIF TG_OP = 'INSERT' THEN
            SELECT pg_catalog.string_agg('["' || d.fight_id::text || '"]', ',') INTO body
              FROM (SELECT DISTINCT s.fight_id FROM pgcable_new n JOIN public.shots s ON s.id = n.shot_id) d;
        ELSE
            SELECT pg_catalog.string_agg('["' || d.fight_id::text || '"]', ',') INTO body
              FROM (SELECT DISTINCT s.fight_id FROM pgcable_old o JOIN public.shots s ON s.id = o.shot_id) d;
        END IF;
    ELSIF TG_OP = 'UPDATE' THEN  -- shots, chase_relationships: the row names its fight
        SELECT pg_catalog.string_agg('["' || d.fight_id::text || '"]', ',') INTO body
          FROM (SELECT DISTINCT v.fight_id
                  FROM pgcable_old o FULL JOIN pgcable_new n ON o.id = n.id
                 CROSS JOIN LATERAL (VALUES (o.fight_id), (n.fight_id)) v(fight_id)
                 WHERE v.fight_id IS NOT NULL
                   AND (o.id IS NULL OR n.id IS NULL OR NOT (n.* OPERATOR(pg_catalog.*=) o.*))) d;
    ELSIF TG_OP = 'INSERT' THEN
        SELECT pg_catalog.string_agg('["' || d.fight_id::text || '"]', ',') INTO body
          FROM (SELECT DISTINCT n.fight_id FROM pgcable_new n WHERE n.fight_id IS NOT NULL) d;
    ELSE
        SELECT pg_catalog.string_agg('["' || d.fight_id::text || '"]', ',') INTO body
          FROM (SELECT DISTINCT o.fight_id FROM pgcable_old o WHERE o.fight_id IS NOT NULL) d;
    END IF;

    IF body IS NOT NULL THEN
        PERFORM pgcable.notify_entries(head, body);
    END IF;
    RETURN NULL;
END
$$;

-- The live-authorization trigger function of campaign_memberships, campaigns and users: whose
-- access to what may have changed. One NOTIFY (or several, each under 7000 bytes)
--   {"k":"a","a":<µs>,"c":[entry, ...]}
-- with entries
--   ["r","<user>","<campaign>"]  the user may have lost the campaign (membership deleted or
--                                moved away, ownership transferred away)
--   ["g","<user>","<campaign>"]  the user may have gained it (membership added or moved in,
--                                ownership received, campaign created)
--   ["c","<campaign>"]           the campaign was deleted
--   ["u","<user>","<flags>"]     the user changed: a admin lost, A admin gained, j jti
--                                changed, i no longer active, x deleted
-- Other changes to these tables (names, timestamps, ...) send nothing. Users have no INSERT
-- trigger: a new user holds no connection yet.
CREATE OR REPLACE FUNCTION pgcable.access_changes() RETURNS trigger
    LANGUAGE plpgsql VOLATILE
    AS $$
DECLARE
    head text := '{"k":"a","a":' || (pg_catalog.date_part('epoch', pg_catalog.now()) * 1000000)::bigint::text || ',"c":[';
    body text;
BEGIN
    -- Transition tables exist only for their events: pgcable_old for UPDATE and DELETE,
    -- pgcable_new for INSERT and UPDATE.
    IF TG_TABLE_NAME = 'campaign_memberships' THEN
        IF TG_OP = 'INSERT' THEN
            SELECT pg_catalog.string_agg(DISTINCT '["g","' || n.user_id::text || '","' || n.campaign_id::text || '"]', ',')
              INTO body FROM pgcable_new n;
        ELSIF TG_OP = 'DELETE' THEN
            SELECT pg_catalog.string_agg(DISTINCT '["r","' || o.user_id::text || '","' || o.campaign_id::text || '"]', ',')
              INTO body FROM pgcable_old o;
        ELSE
            SELECT pg_catalog.string_agg(DISTINCT '["' || v.kind || '","' || v.u::text || '","' || v.c::text || '"]', ',')
              INTO body
              FROM pgcable_old o JOIN pgcable_new n ON o.id = n.id
             CROSS JOIN LATERAL (VALUES ('r', o.user_id, o.campaign_id), ('g', n.user_id, n.campaign_id)) v(kind, u, c)
             WHERE o.user_id IS DISTINCT FROM n.user_id OR o.campaign_id IS DISTINCT FROM n.campaign_id;
        END IF;
    ELSIF TG_TABLE_NAME = 'campaigns' THEN
        IF TG_OP = 'INSERT' THEN
            SELECT pg_catalog.string_agg('["g","' || n.user_id::text || '","' || n.id::text || '"]', ',')
              INTO body FROM pgcable_new n WHERE n.user_id IS NOT NULL;
        ELSIF TG_OP = 'DELETE' THEN
            SELECT pg_catalog.string_agg('["c","' || o.id::text || '"]', ',') INTO body FROM pgcable_old o;
        ELSE
            SELECT pg_catalog.string_agg('["' || v.kind || '","' || v.u::text || '","' || n.id::text || '"]', ',')
              INTO body
              FROM pgcable_old o JOIN pgcable_new n ON o.id = n.id
             CROSS JOIN LATERAL (VALUES ('r', o.user_id), ('g', n.user_id)) v(kind, u)
             WHERE o.user_id IS DISTINCT FROM n.user_id AND v.u IS NOT NULL;
        END IF;
    ELSIF TG_OP = 'DELETE' THEN  -- users
        SELECT pg_catalog.string_agg('["u","' || o.id::text || '","x"]', ',') INTO body FROM pgcable_old o;
    ELSIF TG_OP = 'UPDATE' THEN
        SELECT pg_catalog.string_agg('["u","' || e.id::text || '","' || e.flags || '"]', ',') INTO body
          FROM (SELECT n.id,
                       CASE WHEN o.admin IS TRUE AND n.admin IS NOT TRUE THEN 'a' ELSE '' END
                       || CASE WHEN o.admin IS NOT TRUE AND n.admin IS TRUE THEN 'A' ELSE '' END
                       || CASE WHEN o.jti IS DISTINCT FROM n.jti THEN 'j' ELSE '' END
                       || CASE WHEN o.active IS TRUE AND n.active IS NOT TRUE THEN 'i' ELSE '' END AS flags
                  FROM pgcable_old o JOIN pgcable_new n ON o.id = n.id) e
         WHERE e.flags <> '';
    END IF;

    IF body IS NOT NULL THEN
        PERFORM pgcable.notify_entries(head, body);
    END IF;
    RETURN NULL;
END
$$;

-- TRUNCATE has no rows to report: every campaign showing the table is told to reload it.
--   {"k":"x","t":"<table>","a":<µs>}
CREATE OR REPLACE FUNCTION pgcable.table_truncated() RETURNS trigger
    LANGUAGE plpgsql VOLATILE
    AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('pgcable', '{"k":"x","t":"' || TG_TABLE_NAME || '","a":'
        || (pg_catalog.date_part('epoch', pg_catalog.now()) * 1000000)::bigint::text || '}');
    RETURN NULL;
END
$$;

REVOKE ALL ON SCHEMA pgcable FROM PUBLIC;
GRANT USAGE ON SCHEMA pgcable TO PUBLIC;
REVOKE ALL ON TABLE pgcable.messages FROM PUBLIC;
REVOKE ALL ON SEQUENCE pgcable.nonce FROM PUBLIC;
REVOKE ALL ON FUNCTION pgcable.row_changes() FROM PUBLIC;
REVOKE ALL ON FUNCTION pgcable.table_truncated() FROM PUBLIC;
REVOKE ALL ON FUNCTION pgcable.fight_changes() FROM PUBLIC;
REVOKE ALL ON FUNCTION pgcable.access_changes() FROM PUBLIC;
-- Called by the trigger functions with the writer's rights, so every writer needs it.
GRANT EXECUTE ON FUNCTION pgcable.notify_entries(text, text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION pgcable.broadcast(text, jsonb) TO PUBLIC;
GRANT EXECUTE ON FUNCTION pgcable.disconnect(uuid, boolean) TO PUBLIC;
GRANT EXECUTE ON FUNCTION pgcable.version() TO PUBLIC;

-- Four triggers per table: transition tables differ per event, so one trigger cannot serve
-- INSERT, UPDATE and DELETE; TRUNCATE has no transition tables.

DROP TRIGGER IF EXISTS pgcable_insert ON public.characters;
DROP TRIGGER IF EXISTS pgcable_update ON public.characters;
DROP TRIGGER IF EXISTS pgcable_delete ON public.characters;
DROP TRIGGER IF EXISTS pgcable_truncate ON public.characters;
CREATE TRIGGER pgcable_insert AFTER INSERT ON public.characters
    REFERENCING NEW TABLE AS pgcable_new
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.row_changes();
CREATE TRIGGER pgcable_update AFTER UPDATE ON public.characters
    REFERENCING OLD TABLE AS pgcable_old NEW TABLE AS pgcable_new
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.row_changes();
CREATE TRIGGER pgcable_delete AFTER DELETE ON public.characters
    REFERENCING OLD TABLE AS pgcable_old
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.row_changes();
CREATE TRIGGER pgcable_truncate AFTER TRUNCATE ON public.characters
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.table_truncated();

DROP TRIGGER IF EXISTS pgcable_insert ON public.vehicles;
DROP TRIGGER IF EXISTS pgcable_update ON public.vehicles;
DROP TRIGGER IF EXISTS pgcable_delete ON public.vehicles;
DROP TRIGGER IF EXISTS pgcable_truncate ON public.vehicles;
CREATE TRIGGER pgcable_insert AFTER INSERT ON public.vehicles
    REFERENCING NEW TABLE AS pgcable_new
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.row_changes();
CREATE TRIGGER pgcable_update AFTER UPDATE ON public.vehicles
    REFERENCING OLD TABLE AS pgcable_old NEW TABLE AS pgcable_new
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.row_changes();
CREATE TRIGGER pgcable_delete AFTER DELETE ON public.vehicles
    REFERENCING OLD TABLE AS pgcable_old
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.row_changes();
CREATE TRIGGER pgcable_truncate AFTER TRUNCATE ON public.vehicles
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.table_truncated();

DROP TRIGGER IF EXISTS pgcable_insert ON public.fights;
DROP TRIGGER IF EXISTS pgcable_update ON public.fights;
DROP TRIGGER IF EXISTS pgcable_delete ON public.fights;
DROP TRIGGER IF EXISTS pgcable_truncate ON public.fights;
CREATE TRIGGER pgcable_insert AFTER INSERT ON public.fights
    REFERENCING NEW TABLE AS pgcable_new
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.row_changes();
CREATE TRIGGER pgcable_update AFTER UPDATE ON public.fights
    REFERENCING OLD TABLE AS pgcable_old NEW TABLE AS pgcable_new
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.row_changes();
CREATE TRIGGER pgcable_delete AFTER DELETE ON public.fights
    REFERENCING OLD TABLE AS pgcable_old
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.row_changes();
CREATE TRIGGER pgcable_truncate AFTER TRUNCATE ON public.fights
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.table_truncated();

DROP TRIGGER IF EXISTS pgcable_insert ON public.shots;
DROP TRIGGER IF EXISTS pgcable_update ON public.shots;
DROP TRIGGER IF EXISTS pgcable_delete ON public.shots;
DROP TRIGGER IF EXISTS pgcable_truncate ON public.shots;
CREATE TRIGGER pgcable_insert AFTER INSERT ON public.shots
    REFERENCING NEW TABLE AS pgcable_new
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.fight_changes();
CREATE TRIGGER pgcable_update AFTER UPDATE ON public.shots
    REFERENCING OLD TABLE AS pgcable_old NEW TABLE AS pgcable_new
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.fight_changes();
CREATE TRIGGER pgcable_delete AFTER DELETE ON public.shots
    REFERENCING OLD TABLE AS pgcable_old
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.fight_changes();
CREATE TRIGGER pgcable_truncate AFTER TRUNCATE ON public.shots
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.table_truncated();

DROP TRIGGER IF EXISTS pgcable_insert ON public.character_effects;
DROP TRIGGER IF EXISTS pgcable_update ON public.character_effects;
DROP TRIGGER IF EXISTS pgcable_delete ON public.character_effects;
DROP TRIGGER IF EXISTS pgcable_truncate ON public.character_effects;
CREATE TRIGGER pgcable_insert AFTER INSERT ON public.character_effects
    REFERENCING NEW TABLE AS pgcable_new
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.fight_changes();
CREATE TRIGGER pgcable_update AFTER UPDATE ON public.character_effects
    REFERENCING OLD TABLE AS pgcable_old NEW TABLE AS pgcable_new
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.fight_changes();
CREATE TRIGGER pgcable_delete AFTER DELETE ON public.character_effects
    REFERENCING OLD TABLE AS pgcable_old
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.fight_changes();
CREATE TRIGGER pgcable_truncate AFTER TRUNCATE ON public.character_effects
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.table_truncated();

DROP TRIGGER IF EXISTS pgcable_insert ON public.chase_relationships;
DROP TRIGGER IF EXISTS pgcable_update ON public.chase_relationships;
DROP TRIGGER IF EXISTS pgcable_delete ON public.chase_relationships;
DROP TRIGGER IF EXISTS pgcable_truncate ON public.chase_relationships;
CREATE TRIGGER pgcable_insert AFTER INSERT ON public.chase_relationships
    REFERENCING NEW TABLE AS pgcable_new
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.fight_changes();
CREATE TRIGGER pgcable_update AFTER UPDATE ON public.chase_relationships
    REFERENCING OLD TABLE AS pgcable_old NEW TABLE AS pgcable_new
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.fight_changes();
CREATE TRIGGER pgcable_delete AFTER DELETE ON public.chase_relationships
    REFERENCING OLD TABLE AS pgcable_old
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.fight_changes();
CREATE TRIGGER pgcable_truncate AFTER TRUNCATE ON public.chase_relationships
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.table_truncated();

-- Live authorization: triggers on the tables whose changes can grant or take away access
-- (a TRUNCATE of these tables is refused by their foreign keys or takes the app down anyway).
DROP TRIGGER IF EXISTS pgcable_insert ON public.campaign_memberships;
DROP TRIGGER IF EXISTS pgcable_update ON public.campaign_memberships;
DROP TRIGGER IF EXISTS pgcable_delete ON public.campaign_memberships;
CREATE TRIGGER pgcable_insert AFTER INSERT ON public.campaign_memberships
    REFERENCING NEW TABLE AS pgcable_new
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.access_changes();
CREATE TRIGGER pgcable_update AFTER UPDATE ON public.campaign_memberships
    REFERENCING OLD TABLE AS pgcable_old NEW TABLE AS pgcable_new
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.access_changes();
CREATE TRIGGER pgcable_delete AFTER DELETE ON public.campaign_memberships
    REFERENCING OLD TABLE AS pgcable_old
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.access_changes();

DROP TRIGGER IF EXISTS pgcable_insert ON public.campaigns;
DROP TRIGGER IF EXISTS pgcable_update ON public.campaigns;
DROP TRIGGER IF EXISTS pgcable_delete ON public.campaigns;
CREATE TRIGGER pgcable_insert AFTER INSERT ON public.campaigns
    REFERENCING NEW TABLE AS pgcable_new
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.access_changes();
CREATE TRIGGER pgcable_update AFTER UPDATE ON public.campaigns
    REFERENCING OLD TABLE AS pgcable_old NEW TABLE AS pgcable_new
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.access_changes();
CREATE TRIGGER pgcable_delete AFTER DELETE ON public.campaigns
    REFERENCING OLD TABLE AS pgcable_old
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.access_changes();

DROP TRIGGER IF EXISTS pgcable_insert ON public.users;
DROP TRIGGER IF EXISTS pgcable_update ON public.users;
DROP TRIGGER IF EXISTS pgcable_delete ON public.users;
CREATE TRIGGER pgcable_update AFTER UPDATE ON public.users
    REFERENCING OLD TABLE AS pgcable_old NEW TABLE AS pgcable_new
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.access_changes();
CREATE TRIGGER pgcable_delete AFTER DELETE ON public.users
    REFERENCING OLD TABLE AS pgcable_old
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.access_changes();

COMMIT;
