-- pgcable: a least-privilege database role for the relay (`pgcable serve` and `pgcable check`).
--
-- The relay only reads: it LISTENs, re-reads changed rows and what they render with, checks
-- who may subscribe to what, reads large broadcasts from pgcable.messages and deletes them
-- once old. This role can do exactly that and nothing else: no INSERT or UPDATE anywhere, no
-- DDL, no other tables.
--
-- Run it in the application's database, as the owner of the tables (or a superuser), AFTER
-- `pgcable triggers install` (it grants on schema pgcable). Safe to run again; run it again
-- after `pgcable triggers uninstall` + `install` (that drops pgcable.messages and its grants).
--
--   psql "$ADMIN_DATABASE_URL" -v ON_ERROR_STOP=1 -f triggers/relay_role.sql
--   psql "$ADMIN_DATABASE_URL" -c "ALTER ROLE pgcable_relay PASSWORD '...'"
--   DATABASE_URL=postgres://pgcable_relay:...@db.example.com/app?sslmode=verify-full
--
-- The role is named pgcable_relay; to use another name, replace it throughout this file.
-- Installing or upgrading the triggers (`pgcable triggers install`) needs more (CREATE on the
-- database, ownership of the watched tables): run that as the application's owner role, not
-- as this one.
--
-- LISTEN, pg_notify() and pg_notification_queue_usage() need no grant. If the application
-- adds tables that the relay reads (see src/render/ and src/cable/), add them below.

BEGIN;

DO $role$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'pgcable_relay') THEN
        CREATE ROLE pgcable_relay LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO pgcable_relay', current_database());
END
$role$;

GRANT USAGE ON SCHEMA public, pgcable TO pgcable_relay;

-- What the relay reads: the watched rows and everything their payloads include (the encounter
-- of a running fight reads shots, character_effects and chase_relationships too), and the
-- tables that decide who may subscribe to a campaign or fight.
GRANT SELECT ON TABLE
    public.users,
    public.campaigns,
    public.campaign_memberships,
    public.fights,
    public.characters,
    public.vehicles,
    public.shots,
    public.character_effects,
    public.chase_relationships,
    public.factions,
    public.junctures,
    public.weapons,
    public.carries,
    public.schticks,
    public.character_schticks,
    public.parties,
    public.memberships,
    public.sites,
    public.attunements,
    public.advancements,
    public.image_positions,
    public.active_storage_attachments,
    public.active_storage_blobs
TO pgcable_relay;

-- Broadcasts too large for NOTIFY: read by id, deleted after five minutes.
GRANT SELECT, DELETE ON TABLE pgcable.messages TO pgcable_relay;

-- The installed trigger version (granted to PUBLIC by install.sql too; explicit here).
GRANT EXECUTE ON FUNCTION pgcable.version() TO pgcable_relay;

COMMIT;
