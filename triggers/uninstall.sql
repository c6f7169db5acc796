-- triggers/uninstall.sql: remove everything triggers/install.sql created.
--
-- Drops the pgcable triggers on public.characters, vehicles, fights, shots, character_effects,
-- chase_relationships, campaign_memberships, campaigns and users, then schema pgcable with its functions, sequence and table
-- pgcable.messages (undelivered large broadcasts are lost). The tables and their data are left
-- untouched. Idempotent and
-- transactional; works whether or not the tables exist. Plain SQL, like install.sql.

BEGIN;

-- Keep psql quiet about "already exists, skipping" and the like.
SET LOCAL client_min_messages = warning;
SET LOCAL lock_timeout = '10s';

DO $drop$
DECLARE
    tbl text;
    trg text;
BEGIN
    FOREACH tbl IN ARRAY ARRAY['characters', 'vehicles', 'fights', 'shots', 'character_effects',
                               'chase_relationships', 'campaign_memberships', 'campaigns', 'users'] LOOP
        IF pg_catalog.to_regclass(pg_catalog.format('public.%I', tbl)) IS NOT NULL THEN
            FOREACH trg IN ARRAY ARRAY['pgcable_insert', 'pgcable_update', 'pgcable_delete', 'pgcable_truncate'] LOOP
                EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS %I ON public.%I', trg, tbl);
            END LOOP;
        END IF;
    END LOOP;
END
$drop$;

-- The schema belongs to pgcable: CASCADE also removes anything else put into it, and any
-- trigger someone attached by hand to pgcable.row_changes() on another table (Postgres lists
-- each dropped object in a NOTICE). Tables outside the schema keep their data.
DROP SCHEMA IF EXISTS pgcable CASCADE;

COMMIT;
