-- triggers/install.sql: pgcable change-feed triggers, version 1.
--
-- Installs schema `pgcable` and statement-level triggers on public.characters, public.vehicles and
-- public.fights that NOTIFY channel `pgcable` with identifiers of the changed rows (never row
-- data). See triggers/README.md for the payload contract, the cost and how to install.
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

-- The three tables must exist and have the columns the triggers read.
DO $check$
DECLARE
    tbl text;
    col text;
    kind "char";
BEGIN
    FOREACH tbl IN ARRAY ARRAY['characters', 'vehicles', 'fights'] LOOP
        SELECT c.relkind INTO kind
          FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace
         WHERE s.nspname = 'public' AND c.relname = tbl;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'pgcable install: table public.% does not exist', tbl
                USING HINT = 'pgcable needs public.characters, public.vehicles and public.fights; load the application schema first.';
        END IF;
        IF kind NOT IN ('r', 'p') THEN
            RAISE EXCEPTION 'pgcable install: public.% is not a table (relkind %)', tbl, kind;
        END IF;
        FOREACH col IN ARRAY ARRAY['id', 'campaign_id', 'updated_at'] LOOP
            PERFORM 1
               FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = pg_catalog.format('public.%I', tbl)::pg_catalog.regclass
                AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'pgcable install: table public.% has no column %', tbl, col;
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
    AS $$ SELECT 1 $$;

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
            || ',"m":' || message::text || '}';
    -- Postgres rejects NOTIFY payloads of 8000 bytes or more (failing the transaction); stay
    -- well below and hand anything larger over through a table.
    IF pg_catalog.octet_length(payload) < 7000 THEN
        PERFORM pg_catalog.pg_notify('pgcable', payload);
    ELSE
        INSERT INTO pgcable.messages (stream, message) VALUES (stream, message)
            RETURNING id INTO msg_id;
        PERFORM pg_catalog.pg_notify('pgcable', '{"k":"t","id":' || msg_id::text || '}');
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

-- The row-change trigger function: AFTER ... FOR EACH STATEMENT, with transition tables named
-- pgcable_old / pgcable_new. One statement's changes of one table become a few NOTIFYs
--   {"k":"r","t":"<table>","c":[[action, id, new campaign_id, old campaign_id], ...]}
-- each under 7000 bytes. The 4th element is left out when it equals the 3rd.
-- Actions: i insert, u update, t update of updated_at only ("touch"), d delete. An UPDATE
-- that leaves a row byte-for-byte unchanged sends nothing; one that changes a row's id is sent
-- as d of the old id plus i of the new one.
CREATE OR REPLACE FUNCTION pgcable.row_changes() RETURNS trigger
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pgcable, pg_temp
    AS $$
DECLARE
    head text := '{"k":"r","t":' || pg_catalog.to_json(TG_TABLE_NAME::text)::text || ',"c":[';
    entries text[];
BEGIN
    -- Each entry is built as JSON text: '["u","<id>","<new cid>"]' or '[..., "<old cid>"]'.
    IF TG_OP = 'INSERT' THEN
        SELECT pg_catalog.array_agg(
                   '["i",' || pg_catalog.to_json(n.id)::text || ','
                   || COALESCE(pg_catalog.to_json(n.campaign_id)::text, 'null')
                   || CASE WHEN n.campaign_id IS NULL THEN ']' ELSE ',null]' END)
          INTO entries
          FROM pgcable_new n;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT pg_catalog.array_agg(
                   '["d",' || pg_catalog.to_json(o.id)::text || ',null'
                   || CASE WHEN o.campaign_id IS NULL THEN ']'
                           ELSE ',' || pg_catalog.to_json(o.campaign_id)::text || ']' END)
          INTO entries
          FROM pgcable_old o;
    ELSIF TG_OP = 'UPDATE' THEN
        -- Old and new rows are paired by id. `*=` compares the rows' stored bytes: it works for
        -- every column type (json, point, ... have no `=`) and never calls a changed row equal.
        -- Only when a row changed and so did updated_at, the row is compared again with
        -- updated_at put back to its old value, to tell a touch from a real update.
        SELECT pg_catalog.array_agg(
                   '["' || c.action || '",' || pg_catalog.to_json(c.id)::text || ','
                   || COALESCE(pg_catalog.to_json(c.new_cid)::text, 'null')
                   || CASE WHEN c.new_cid IS NOT DISTINCT FROM c.old_cid THEN ']'
                           ELSE ',' || COALESCE(pg_catalog.to_json(c.old_cid)::text, 'null') || ']' END)
          INTO entries
          FROM (
              SELECT 'd' AS action, o.id, NULL AS new_cid, o.campaign_id AS old_cid
                FROM pgcable_old o
               WHERE NOT EXISTS (SELECT 1 FROM pgcable_new n WHERE n.id = o.id)
              UNION ALL
              SELECT CASE
                         WHEN o.id IS NULL THEN 'i'
                         WHEN o.updated_at IS DISTINCT FROM n.updated_at
                              AND pg_catalog.jsonb_populate_record(
                                      n.*, pg_catalog.jsonb_build_object('updated_at', o.updated_at))
                                  OPERATOR(pg_catalog.*=) o.*
                              THEN 't'
                         ELSE 'u'
                     END,
                     n.id, n.campaign_id, o.campaign_id
                FROM pgcable_new n
                LEFT JOIN pgcable_old o ON o.id = n.id
               WHERE o.id IS NULL OR NOT (n.* OPERATOR(pg_catalog.*=) o.*)
          ) c;
    END IF;

    IF entries IS NOT NULL THEN
        -- Split the entries into payloads under 7000 bytes. An entry whose (comma-terminated)
        -- text starts at byte offset s goes to chunk s / budget, so a chunk holds at most
        -- budget - 1 + (longest entry) bytes of entries.
        PERFORM pg_catalog.pg_notify('pgcable', head || pg_catalog.string_agg(x.e, ',') || ']}')
           FROM (SELECT y.e,
                        (pg_catalog.sum(y.len) OVER (ROWS UNBOUNDED PRECEDING) - y.len)
                          / GREATEST(6990 - pg_catalog.octet_length(head) - pg_catalog.max(y.len) OVER (), 1) AS chunk
                   FROM (SELECT u.e, pg_catalog.octet_length(u.e) + 1 AS len
                           FROM pg_catalog.unnest(entries) AS u(e)) y) x
          GROUP BY x.chunk;
    END IF;
    RETURN NULL;
END
$$;

REVOKE ALL ON SCHEMA pgcable FROM PUBLIC;
GRANT USAGE ON SCHEMA pgcable TO PUBLIC;
REVOKE ALL ON TABLE pgcable.messages FROM PUBLIC;
REVOKE ALL ON SEQUENCE pgcable.nonce FROM PUBLIC;
REVOKE ALL ON FUNCTION pgcable.row_changes() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgcable.broadcast(text, jsonb) TO PUBLIC;
GRANT EXECUTE ON FUNCTION pgcable.disconnect(uuid, boolean) TO PUBLIC;
GRANT EXECUTE ON FUNCTION pgcable.version() TO PUBLIC;

-- Three triggers per table: transition tables differ per event, so one trigger cannot serve
-- INSERT, UPDATE and DELETE.
DROP TRIGGER IF EXISTS pgcable_insert ON public.characters;
DROP TRIGGER IF EXISTS pgcable_update ON public.characters;
DROP TRIGGER IF EXISTS pgcable_delete ON public.characters;
CREATE TRIGGER pgcable_insert AFTER INSERT ON public.characters
    REFERENCING NEW TABLE AS pgcable_new
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.row_changes();
CREATE TRIGGER pgcable_update AFTER UPDATE ON public.characters
    REFERENCING OLD TABLE AS pgcable_old NEW TABLE AS pgcable_new
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.row_changes();
CREATE TRIGGER pgcable_delete AFTER DELETE ON public.characters
    REFERENCING OLD TABLE AS pgcable_old
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.row_changes();

DROP TRIGGER IF EXISTS pgcable_insert ON public.vehicles;
DROP TRIGGER IF EXISTS pgcable_update ON public.vehicles;
DROP TRIGGER IF EXISTS pgcable_delete ON public.vehicles;
CREATE TRIGGER pgcable_insert AFTER INSERT ON public.vehicles
    REFERENCING NEW TABLE AS pgcable_new
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.row_changes();
CREATE TRIGGER pgcable_update AFTER UPDATE ON public.vehicles
    REFERENCING OLD TABLE AS pgcable_old NEW TABLE AS pgcable_new
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.row_changes();
CREATE TRIGGER pgcable_delete AFTER DELETE ON public.vehicles
    REFERENCING OLD TABLE AS pgcable_old
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.row_changes();

DROP TRIGGER IF EXISTS pgcable_insert ON public.fights;
DROP TRIGGER IF EXISTS pgcable_update ON public.fights;
DROP TRIGGER IF EXISTS pgcable_delete ON public.fights;
CREATE TRIGGER pgcable_insert AFTER INSERT ON public.fights
    REFERENCING NEW TABLE AS pgcable_new
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.row_changes();
CREATE TRIGGER pgcable_update AFTER UPDATE ON public.fights
    REFERENCING OLD TABLE AS pgcable_old NEW TABLE AS pgcable_new
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.row_changes();
CREATE TRIGGER pgcable_delete AFTER DELETE ON public.fights
    REFERENCING OLD TABLE AS pgcable_old
    FOR EACH STATEMENT EXECUTE FUNCTION pgcable.row_changes();

COMMIT;
