-- sql/demo_seed.sql
--
-- A small demo data set for a FRESH database loaded with sql/schema.sql:
--   psql -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres -d <db> -f sql/demo_seed.sql
-- Not idempotent (plain INSERTs). Timestamps are now(), taken in UTC like Rails' values
-- (SET LOCAL TIME ZONE below, so the server's TimeZone setting does not matter).
-- Works with or without the pgcable triggers installed.
--
-- Fixed ids (for docs and examples):
--   user (gamemaster)   00000000-0000-4000-8000-000000000001   gm@example.com, jti below
--   campaign            00000000-0000-4000-8000-0000000000c1   'Demo Campaign'
--   faction             00000000-0000-4000-8000-0000000000f1   'The Dragons'
--   juncture            00000000-0000-4000-8000-0000000000d1   'Contemporary'
--   weapon              00000000-0000-4000-8000-000000000501   'Beretta 92FS'
--   characters          00000000-0000-4000-8000-000000000101   'Johnny Tso'      (PC, has image)
--                       00000000-0000-4000-8000-000000000102   'Big Bruiser'     (Featured Foe)
--                       00000000-0000-4000-8000-000000000103   'Ninja'           (Mook)
--   vehicles            00000000-0000-4000-8000-000000000201   'Yellow Taxi'
--                       00000000-0000-4000-8000-000000000202   'Black Sedan'
--   fight               00000000-0000-4000-8000-000000000301   'Showdown at the Docks'
--   shots               00000000-0000-4000-8000-000000000311   Johnny Tso (drives the taxi)
--                       00000000-0000-4000-8000-000000000312   Big Bruiser
--                       00000000-0000-4000-8000-000000000313   Ninja (count 12 mooks)
--                       00000000-0000-4000-8000-000000000314   Yellow Taxi (driver: shot 311)
--   schtick             00000000-0000-4000-8000-000000000401   'Both Guns Blazing'
--   carry               00000000-0000-4000-8000-000000000511   Johnny Tso carries the Beretta
--   party               00000000-0000-4000-8000-000000000601   'The Crew'
--   membership          00000000-0000-4000-8000-000000000611   Johnny Tso in The Crew
--   advancement         00000000-0000-4000-8000-000000000701
--   image_position      00000000-0000-4000-8000-000000000801   Johnny Tso, desktop_entity
--   active_storage blob/attachment: bigint identity ids (1 and 1 in a fresh database);
--                       blob key 'demo/hero.png'
--
-- The JWT jti of the demo user is 'demo-gm-jti-00000000000000000001'.

BEGIN;
SET LOCAL TIME ZONE 'UTC';

-- Gamemaster user (current_campaign_id is set once the campaign exists).
INSERT INTO users (id, first_name, last_name, name, email, encrypted_password, jti,
                   gamemaster, admin, confirmed_at, created_at, updated_at)
VALUES ('00000000-0000-4000-8000-000000000001', 'Demo', 'Gamemaster', 'Demo Gamemaster',
        'gm@example.com', '', 'demo-gm-jti-00000000000000000001',
        true, false, now(), now(), now());

INSERT INTO campaigns (id, user_id, name, description, created_at, updated_at)
VALUES ('00000000-0000-4000-8000-0000000000c1', '00000000-0000-4000-8000-000000000001',
        'Demo Campaign', 'A small campaign for trying out pgcable.', now(), now());

UPDATE users SET current_campaign_id = '00000000-0000-4000-8000-0000000000c1'
 WHERE id = '00000000-0000-4000-8000-000000000001';

INSERT INTO factions (id, campaign_id, name, description, created_at, updated_at)
VALUES ('00000000-0000-4000-8000-0000000000f1', '00000000-0000-4000-8000-0000000000c1',
        'The Dragons', 'Heroes fighting the secret war for the Chi.', now(), now());

INSERT INTO junctures (id, campaign_id, faction_id, name, description, created_at, updated_at)
VALUES ('00000000-0000-4000-8000-0000000000d1', '00000000-0000-4000-8000-0000000000c1',
        '00000000-0000-4000-8000-0000000000f1', 'Contemporary', 'Hong Kong, today.', now(), now());

INSERT INTO weapons (id, campaign_id, name, description, damage, concealment, reload_value,
                     juncture, category, kachunk, created_at, updated_at)
VALUES ('00000000-0000-4000-8000-000000000501', '00000000-0000-4000-8000-0000000000c1',
        'Beretta 92FS', 'A reliable 9mm pistol.', 10, 1, 3,
        'Contemporary', 'Guns', false, now(), now());

-- Characters. action_values / description / skills carry full key sets, as Rails' before_save
-- would write them. Johnny's description has HTML, '&' and non-ASCII to exercise escaping.
INSERT INTO characters (id, campaign_id, user_id, faction_id, juncture_id, name, active,
                        defense, impairments, color, task, is_template, wealth, summary,
                        equipped_weapon_id, action_values, description, skills,
                        created_at, updated_at)
VALUES
('00000000-0000-4000-8000-000000000101', '00000000-0000-4000-8000-0000000000c1',
 '00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8000-0000000000f1',
 '00000000-0000-4000-8000-0000000000d1', 'Johnny Tso', true,
 14, 0, '#d32f2f', false, false, 'Working Stiff', 'Ex-cop with two pistols.',
 '00000000-0000-4000-8000-000000000501',
 '{"Type": "PC", "Guns": 15, "Martial Arts": 13, "Sorcery": 0, "Creature": 0, "Scroungetech": 0,
   "Genome": 0, "Mutant": 0, "MainAttack": "Guns", "SecondaryAttack": "Martial Arts",
   "Defense": 14, "Toughness": 7, "Speed": 7, "Fortune": 7, "Max Fortune": 7,
   "FortuneType": "Fortune", "Wounds": 0, "Damage": 0, "Marks of Death": 0,
   "Archetype": "Ex-Special Forces", "Faction": "The Dragons"}',
 '{"Nicknames": "Jonny Two-Guns", "Age": "34", "Height": "5''11\"", "Weight": "170 lbs",
   "Hair Color": "Black", "Eye Color": "Brown", "Style of Dress": "Leather jacket",
   "Appearance": "<p>Scar over the left eye &amp; a lopsided grin.</p>",
   "Background": "<p>Left the Royal Hong Kong Police after the Kowloon job — café owner now.</p>",
   "Melodramatic Hook": "<p>His partner was framed &amp; he knows who did it.</p>"}',
 '{"Deceit": 0, "Detective": 12, "Driving": 13, "Fix-It": 0, "Gambling": 0, "Intimidation": 10,
   "Intrusion": 0, "Leadership": 0, "Medicine": 0, "Police": 13, "Sabotage": 0,
   "Seduction": 0, "Constitution": 0, "Will": 0, "Notice": 0, "Strength": 0}',
 now(), now()),
('00000000-0000-4000-8000-000000000102', '00000000-0000-4000-8000-0000000000c1',
 NULL, NULL, '00000000-0000-4000-8000-0000000000d1', 'Big Bruiser', true,
 13, 0, '#424242', false, false, NULL, 'Triad enforcer.',
 NULL,
 '{"Type": "Featured Foe", "Guns": 0, "Martial Arts": 14, "Sorcery": 0, "Creature": 0,
   "Scroungetech": 0, "Genome": 0, "Mutant": 0, "MainAttack": "Martial Arts",
   "SecondaryAttack": null, "Defense": 13, "Toughness": 7, "Speed": 6, "Fortune": 0,
   "Max Fortune": 0, "FortuneType": "Fortune", "Wounds": 0, "Damage": 9, "Marks of Death": 0,
   "Archetype": "", "Faction": ""}',
 '{"Nicknames": "", "Age": "", "Height": "", "Weight": "", "Hair Color": "", "Eye Color": "",
   "Style of Dress": "Sharp suit", "Appearance": "<p>Enormous.</p>", "Background": "",
   "Melodramatic Hook": ""}',
 '{"Deceit": 0, "Detective": 0, "Driving": 0, "Fix-It": 0, "Gambling": 0, "Intimidation": 12,
   "Intrusion": 0, "Leadership": 0, "Medicine": 0, "Police": 0, "Sabotage": 0,
   "Seduction": 0, "Constitution": 0, "Will": 0, "Notice": 0, "Strength": 0}',
 now(), now()),
('00000000-0000-4000-8000-000000000103', '00000000-0000-4000-8000-0000000000c1',
 NULL, NULL, NULL, 'Ninja', true,
 13, 0, NULL, false, false, NULL, NULL,
 NULL,
 '{"Type": "Mook", "Guns": 0, "Martial Arts": 8, "Sorcery": 0, "Creature": 0,
   "Scroungetech": 0, "Genome": 0, "Mutant": 0, "MainAttack": "Martial Arts",
   "SecondaryAttack": null, "Defense": 13, "Toughness": 0, "Speed": 6, "Fortune": 0,
   "Max Fortune": 0, "FortuneType": "Fortune", "Wounds": 0, "Damage": 7, "Marks of Death": 0,
   "Archetype": "", "Faction": ""}',
 '{"Nicknames": "", "Age": "", "Height": "", "Weight": "", "Hair Color": "", "Eye Color": "",
   "Style of Dress": "Black pajamas", "Appearance": "", "Background": "", "Melodramatic Hook": ""}',
 '{"Deceit": 0, "Detective": 0, "Driving": 0, "Fix-It": 0, "Gambling": 0, "Intimidation": 0,
   "Intrusion": 0, "Leadership": 0, "Medicine": 0, "Police": 0, "Sabotage": 0,
   "Seduction": 0, "Constitution": 0, "Will": 0, "Notice": 0, "Strength": 0}',
 now(), now());

INSERT INTO vehicles (id, campaign_id, user_id, faction_id, juncture_id, name, color,
                      impairments, task, summary, action_values, description,
                      created_at, updated_at)
VALUES
('00000000-0000-4000-8000-000000000201', '00000000-0000-4000-8000-0000000000c1',
 '00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8000-0000000000f1',
 '00000000-0000-4000-8000-0000000000d1', 'Yellow Taxi', '#fbc02d', 0, false, 'Borrowed.',
 '{"Type": "PC", "Acceleration": 7, "Handling": 8, "Squeal": 9, "Frame": 6, "Crunch": 7,
   "Chase Points": 0, "Condition Points": 0, "Pursuer": "true", "Position": "far"}',
 '{"Size": "Car", "Appearance": "<p>Dented &amp; unlicensed.</p>", "Weight": "", "Color": "Yellow"}',
 now(), now()),
('00000000-0000-4000-8000-000000000202', '00000000-0000-4000-8000-0000000000c1',
 NULL, NULL, '00000000-0000-4000-8000-0000000000d1', 'Black Sedan', '#212121', 0, false, NULL,
 '{"Type": "Featured Foe", "Acceleration": 8, "Handling": 7, "Squeal": 10, "Frame": 7,
   "Crunch": 8, "Chase Points": 0, "Condition Points": 0, "Pursuer": "false", "Position": "far"}',
 '{"Size": "Car", "Appearance": "", "Weight": "", "Color": "Black"}',
 now(), now());

INSERT INTO fights (id, campaign_id, user_id, name, description, sequence, active,
                    started_at, season, session, created_at, updated_at)
VALUES ('00000000-0000-4000-8000-000000000301', '00000000-0000-4000-8000-0000000000c1',
        '00000000-0000-4000-8000-000000000001', 'Showdown at the Docks',
        '<p>Crates, forklifts &amp; a container ship.</p>', 1, true,
        now(), 1, 3, now(), now());

-- Shots: Johnny drives the taxi (shot 311 .driving_id -> 314, shot 314 .driver_id -> 311).
INSERT INTO shots (id, fight_id, character_id, vehicle_id, shot, count, impairments, color,
                   location, created_at, updated_at)
VALUES
('00000000-0000-4000-8000-000000000311', '00000000-0000-4000-8000-000000000301',
 '00000000-0000-4000-8000-000000000101', NULL, 14, 0, 0, NULL, 'Pier 4', now(), now()),
('00000000-0000-4000-8000-000000000312', '00000000-0000-4000-8000-000000000301',
 '00000000-0000-4000-8000-000000000102', NULL, 12, 0, 0, NULL, 'Warehouse roof', now(), now()),
('00000000-0000-4000-8000-000000000313', '00000000-0000-4000-8000-000000000301',
 '00000000-0000-4000-8000-000000000103', NULL, 8, 12, 0, '#9e9e9e', NULL, now(), now()),
('00000000-0000-4000-8000-000000000314', '00000000-0000-4000-8000-000000000301',
 NULL, '00000000-0000-4000-8000-000000000201', 14, 0, 0, NULL, 'Pier 4', now(), now());

UPDATE shots SET driver_id = '00000000-0000-4000-8000-000000000311'
 WHERE id = '00000000-0000-4000-8000-000000000314';
UPDATE shots SET driving_id = '00000000-0000-4000-8000-000000000314'
 WHERE id = '00000000-0000-4000-8000-000000000311';

INSERT INTO schticks (id, campaign_id, name, description, category, path, color, bonus,
                      archetypes, created_at, updated_at)
VALUES ('00000000-0000-4000-8000-000000000401', '00000000-0000-4000-8000-0000000000c1',
        'Both Guns Blazing', '<p>Fire two pistols at once; +1 Damage.</p>', 'Guns', 'Core',
        '#d32f2f', false, '["Ex-Special Forces", "Killer"]', now(), now());

INSERT INTO character_schticks (character_id, schtick_id, created_at, updated_at)
VALUES ('00000000-0000-4000-8000-000000000101', '00000000-0000-4000-8000-000000000401', now(), now());

INSERT INTO carries (id, character_id, weapon_id, created_at, updated_at)
VALUES ('00000000-0000-4000-8000-000000000511', '00000000-0000-4000-8000-000000000101',
        '00000000-0000-4000-8000-000000000501', now(), now());

INSERT INTO parties (id, campaign_id, faction_id, juncture_id, name, description,
                     created_at, updated_at)
VALUES ('00000000-0000-4000-8000-000000000601', '00000000-0000-4000-8000-0000000000c1',
        '00000000-0000-4000-8000-0000000000f1', '00000000-0000-4000-8000-0000000000d1',
        'The Crew', 'Johnny and friends.', now(), now());

INSERT INTO memberships (id, party_id, character_id, vehicle_id, role, position,
                         created_at, updated_at)
VALUES ('00000000-0000-4000-8000-000000000611', '00000000-0000-4000-8000-000000000601',
        '00000000-0000-4000-8000-000000000101', NULL, 'leader', 0, now(), now());

INSERT INTO advancements (id, character_id, description, created_at, updated_at)
VALUES ('00000000-0000-4000-8000-000000000701', '00000000-0000-4000-8000-000000000101',
        '+1 Guns', now(), now());

-- Image for Johnny Tso: blob (ImageKit URL in metadata) + attachment.
INSERT INTO active_storage_blobs (key, filename, content_type, metadata, service_name,
                                  byte_size, checksum, created_at)
VALUES ('demo/hero.png', 'hero.png', 'image/png',
        '{"imagekit_url":"https://ik.imagekit.io/demo/hero.png"}', 'imagekit',
        123456, 'q1MKSHMX1vYt6O5VL8SXuA==', now());

INSERT INTO active_storage_attachments (name, record_type, record_id, blob_id, created_at)
SELECT 'image', 'Character', '00000000-0000-4000-8000-000000000101', b.id, now()
  FROM active_storage_blobs b
 WHERE b.key = 'demo/hero.png';

INSERT INTO image_positions (id, positionable_type, positionable_id, context,
                             x_position, y_position, style_overrides, created_at, updated_at)
VALUES ('00000000-0000-4000-8000-000000000801', 'Character',
        '00000000-0000-4000-8000-000000000101', 'desktop_entity',
        12.5, -3.0, '{}', now(), now());

COMMIT;
